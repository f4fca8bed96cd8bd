"""The timing harness: best-of timers, the counter of XLA programs built while timing, the matmul FLOPs of
an MLP's training step and the matmul peak they are set against."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._compat import unregister_event_duration_listener

# A program built by XLA, or loaded from the persistent compilation cache (the CLI turns that on):
# either way the in-memory jit cache missed.
PROGRAM_BUILD_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")


def mlp_flops_per_example(layer_sizes) -> int:
    """Matmul FLOPs of one training example (forward + backward) of the MLP ``layer_sizes`` (d0, ...,
    d_L); see ``jaxmlp.bench``'s docstring."""
    s = sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    first = layer_sizes[0] * layer_sizes[1]
    return 2 * s + 2 * s + 2 * (s - first)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a jitted float32 ``(size, size) @ (size, size)`` on the default device, best
    of ``repeats`` runs after a warm-up."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (size, size), jnp.float32)
    b = jax.random.normal(k2, (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = _best_of(lambda: f(a, b).block_until_ready(), repeats)
    return 2.0 * size ** 3 / best / 1e9


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_per_step(run_chunk: Callable[[int, int], None], steps: int, repeats: int, chunks: int = 10) -> float:
    """Best seconds per step over ``repeats`` passes of ``steps`` steps, each pass timed in ``chunks``
    pieces: ``run_chunk(a, b)`` runs steps a..b-1 and waits for them. Short pieces let best-of skip
    the moments when other processes hold the CPU."""
    size = max(1, steps // chunks)
    best = float("inf")
    for _ in range(max(repeats, 1)):
        for a in range(0, steps - size + 1, size):
            t0 = time.perf_counter()
            run_chunk(a, a + size)
            best = min(best, (time.perf_counter() - t0) / size)
    return best


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """(best seconds of ``repeats`` calls, XLA compilations during them): the second number is the
    check that steady-state calls reuse their compiled programs."""
    with CompileCounter() as counter:
        best = _best_of(fn, repeats)
    return best, counter.count


class CompileCounter:
    """Context manager counting the XLA programs built (compiled, or loaded from the persistent
    cache) while active: ``with CompileCounter() as c: ...; c.count``."""

    def __init__(self):
        self.count = 0

    def _listener(self, event, duration, **kwargs):
        if event in PROGRAM_BUILD_EVENTS:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        unregister_event_duration_listener(self._listener)
