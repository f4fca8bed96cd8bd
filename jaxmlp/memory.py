"""Will a run fit? An estimate of the memory a model, its optimizer, a batch and the data need, checked
against what the device has, so that an impossible run is refused in a second instead of swapping or
hanging for minutes.

The estimate counts what a training run keeps alive at once: the state twice (the last good state is
kept while the next chunk computes; no buffer donation), the gradients and one update's temporaries,
the training, validation and test inputs on the device, and a batch's activations forward and
backward. It is an estimate (XLA fuses and reuses buffers): it refuses only what is clearly too big.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax

from . import optim


@functools.cache
def slots(optimizer: str) -> int:
    """The params-sized buffers the optimizer named ``optimizer`` keeps (0 for sgd, 1 for momentum, 2 for adam):
    its state's size over the params' size, from ``jax.eval_shape`` of its ``init`` (nothing is computed)."""
    params = {"w": jax.ShapeDtypeStruct((1024,), "float32")}
    state = jax.eval_shape(optim.by_name(optimizer, 0.1).init, params)
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(state)) // 1024


HEADROOM = 0.9  # leave a tenth for the runtime, the compiler and everything else


class MemoryEstimate(NamedTuple):
    """What :func:`estimate` returns, in bytes (``params`` a count).

    Attributes:
        params: the model's parameter count.
        state_bytes: params, optimizer slots and gradients, all copies alive at once.
        data_bytes: the training (and test) inputs on the device.
        batch_bytes: one batch's activations, forward and backward.
        total: the sum of the three byte counts.
    """

    params: int       # parameter count
    state_bytes: int  # params, optimizer slots and gradients, all copies alive at once
    data_bytes: int   # inputs on the device
    batch_bytes: int  # one batch's activations, forward and backward
    total: int


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def estimate(config, num_examples: int, input_dim: int, num_classes: int, num_test: int = 0, *,
             params: int) -> MemoryEstimate:
    """The bytes a training run of ``config`` on ``num_examples`` (plus ``num_test``) inputs needs.

    Args:
        config: the run's ``TrainConfig``.
        num_examples: training examples.
        input_dim: features per example.
        num_classes: outputs.
        num_test: test examples also kept on the device.
        params: the model's parameter count (``runs.param_count``).
    """
    size = 8 if config.dtype == "float64" else 4
    p = int(params)
    copies = 2 * (1 + slots(config.optimizer)) + 2  # two states, gradients, an update's temporaries
    state = p * size * copies
    data = (num_examples + num_test) * input_dim * size
    from .models import from_config

    width = from_config(config).units(input_dim, num_classes)
    batch = config.batch_size * width * size * 4
    return MemoryEstimate(p, state, data, batch, state + data + batch)


def available_bytes(device=None) -> int | None:
    """Memory the device can give: an accelerator's own limit, or the host's available memory (and the
    container's limit, when there is one). None when it cannot be told."""
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else int(limit) - int(stats.get("bytes_in_use", 0))
    return _host_available()


def _host_available() -> int | None:
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text.isdigit():
            found.append(int(text))
    except OSError:
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def check_fits(config, num_examples: int, input_dim: int, num_classes: int, num_test: int = 0,
               available: int | None = None, *, params: int) -> MemoryEstimate:
    """The estimate, or MemoryError (one line: the estimate, what is available, what to change).

    Args:
        config: the run's ``TrainConfig``.
        num_examples: training examples.
        input_dim: features per example.
        num_classes: outputs.
        num_test: test examples also kept on the device.
        available: bytes available (None: asked of the device).
        params: the model's parameter count.
    """
    est = estimate(config, num_examples, input_dim, num_classes, num_test, params=params)
    have = available if available is not None else available_bytes()
    if have is not None and est.total > HEADROOM * have:
        raise MemoryError(
            f"this run needs about {_gb(est.total)} ({est.params:,} parameters: {_gb(est.state_bytes)} for them, "
            f"their optimizer state and gradients; {_gb(est.data_bytes)} of data; {_gb(est.batch_bytes)} per "
            f"batch) but {_gb(have)} is available on {jax.devices()[0].platform}; choose a smaller "
            f"TrainConfig.hidden or TrainConfig.batch_size")
    return est


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is XLA failing to allocate (RESOURCE_EXHAUSTED), to be reported as one line."""
    return type(err).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and "RESOURCE_EXHAUSTED" in str(err)

