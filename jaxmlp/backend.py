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
"""
from __future__ import annotations

import os
from typing import NamedTuple

import jax


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
