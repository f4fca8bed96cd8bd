"""Every choice that depends on the backend (CPU, GPU, TPU), made in one place.

The rest of the library asks ``choices()`` instead of testing ``jax.default_backend()`` itself, so a
run on an accelerator needs no code change, and the CPU tests exercise the same switch by passing a
platform name (``choices("gpu")``).

* conv_impl: XLA:CPU runs a convolution inside a compiled loop ~20x slower than the same product as
  an im2col matmul, so the CNN uses im2col on CPUs and XLA's native convolution elsewhere.
* chunk_seconds: how long one compiled chunk of training steps should take. Between chunks the host
  reads the losses, draws progress and checks for signals, so this bounds how long Ctrl-C waits. Each
  call of the chunk program also pays a fixed cost that XLA:CPU hoists out of the loop (about 60 ms for
  the CNN with augmentation, measured: 2-step chunks ran at 119 ms a step, 8-step ones at 97, 40-step
  ones at 88), so a CPU chunk has at least 16 steps (about 1.5 s for the CNN). Very long chunks are not
  better either: the seed run's epoch as one 1875-step chunk took 0.52-0.6 s against 0.40 s in chunks
  of a few hundred steps (same executable; measured, cause not found), hence a quarter second.
* sweep_chains: independent scans per vmapped sweep program. XLA:CPU runs independent operations on
  different cores, so several chains use a multi-core CPU; an accelerator wants one wide program.
* memory: what "available" means for the memory check (``memory.available_bytes``): the host's free
  memory on a CPU, the device's own limit (``memory_stats``) on an accelerator.

Buffers are not donated: the engine keeps the last good state while the next chunk runs (so a chunk
that diverges leaves the previous state to report and checkpoint), at the cost of one copy of the
state. JAX's default GPU preallocation (75% of the device) is left as is: one process per GPU is the
supported layout, and ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is the user's switch for sharing one.

What float32 means: the matmul-precision policy
------------------------------------------------
Only matrix products and convolutions of 32-bit inputs depend on the backend; everything else (and
all of float64) is IEEE arithmetic everywhere. ``TrainConfig.matmul_precision`` (``--matmul-precision``)
picks one of ``MATMUL_PRECISIONS``, applied around everything a run traces (``matmul_precision``):

* "default" (the default): JAX's own default (``jax_default_matmul_precision``, unset unless the user
  sets ``JAX_DEFAULT_MATMUL_PRECISION``). On CPUs that is full float32 (every setting gives the same
  bits there), so nothing changes on a CPU. On NVIDIA GPUs since Ampere (A100, H100, H200) it is
  TF32: the inputs rounded to 10 mantissa bits (relative 2**-11, about 5e-4), products summed in
  float32, several times faster. On TPUs, one bfloat16 pass (2**-8).
* "highest": full float32 on every backend (GPUs then leave the TF32 tensor cores unused), for
  results that agree with a CPU's to float32 round-off.
* "high": in between where the hardware has it: three bfloat16 passes on TPUs; on GPUs no coarser
  than TF32 (XLA's choice; ``scripts/gpu_check.sh`` measures each setting's error on the device).

``matmul_epsilon`` gives the relative rounding of a product's inputs under each setting; the tests'
float32 tolerances are derived from it (``tests/conftest.py``), so a test states the error the policy
allows, not the CPU's arithmetic. The setting is part of every compiled program's identity: JAX's jit
cache and its persistent cache key on it (it changes the HLO's ``operand_precision``), and so does
``engine.compile_program``.
"""
from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import jax

MATMUL_PRECISIONS = ("default", "high", "highest")


class Choices(NamedTuple):
    platform: str
    conv_impl: str        # "im2col" or "xla"
    chunk_seconds: float  # target wall time of one compiled chunk
    min_chunk_steps: int  # fewest steps in a chunk (unless the epoch has fewer left)
    max_sweep_chains: int  # independent chains in a sweep program (1: one wide program)


def choices(platform: str | None = None) -> Choices:
    """The choices for ``platform`` ("cpu", "gpu", "tpu"; default: the default backend)."""
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return Choices("cpu", "im2col", 0.25, 16, max(1, min(16, 2 * (os.cpu_count() or 1))))
    return Choices(platform, "xla", 0.25, 1, 1)


def matmul_precision(setting: str = "default") -> contextlib.AbstractContextManager:
    """The context in which float32 matmuls and convolutions traced (and compiled) inside it run at
    ``setting``, one of ``MATMUL_PRECISIONS`` ("default": JAX's own default, no context at all).

    JAX's setting is per thread: a program compiled on another thread needs the context there too.
    """
    if setting not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision: setting: unknown value {setting!r}; choose one of "
                         f"{', '.join(MATMUL_PRECISIONS)}")
    return contextlib.nullcontext() if setting == "default" else jax.default_matmul_precision(setting)


# JAX's names for the levels (jax.default_matmul_precision accepts either spelling).
_LEVELS = {None: "default", "default": "default", "bfloat16": "default", "high": "high", "tensorfloat32": "high",
           "highest": "highest", "float32": "highest", "F32_F32_F32": "highest", "TF32_TF32_F32": "high",
           "BF16_BF16_F32": "default"}
_EPSILON = {  # (platform, level) -> relative rounding of a float32 product's inputs
    ("gpu", "default"): 2.0 ** -11, ("gpu", "high"): 2.0 ** -11,
    ("tpu", "default"): 2.0 ** -8, ("tpu", "high"): 2.0 ** -16,
}


def matmul_epsilon(setting: str | None = None, platform: str | None = None) -> float:
    """The relative rounding (unit roundoff) of the inputs of a float32 matmul under ``setting`` on
    ``platform``: 2**-24 for full float32, 2**-11 for TF32, 2**-8 for one bfloat16 pass.

    Args:
        setting: a ``MATMUL_PRECISIONS`` value (None: the one in force in this thread, as JAX reads it).
        platform: "cpu", "gpu", "tpu" (default: the default backend). A GPU is assumed to have TF32
            (Ampere or later): the bound is the larger one.
    """
    platform = platform or jax.default_backend()
    if setting in (None, "default"):  # JAX's default, or what the user or a context set it to
        setting = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
    level = _LEVELS.get(setting, "default")  # an unknown algorithm preset: assume the coarsest
    platform = "gpu" if platform in ("cuda", "rocm") else platform
    return _EPSILON.get((platform, level), 2.0 ** -24)
