"""What the engine's host loop and its handlers exchange: the ``Run`` (fixed for a run), the ``Event``
each handler receives between chunks, and the exceptions that end a run.

Kept apart from ``engine`` so that ``handlers`` (which the engine's ``train`` installs) and the engine
both import it, and neither imports the other.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Run", "Event", "StopRun", "DivergenceError", "Interrupted"]


class DivergenceError(ArithmeticError):
    """Training diverged (a non-finite loss or params, or the loss far above its start)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal at a chunk boundary; ``state`` is where it stopped."""

    def __init__(self, signum: int, state: Any, saved: str | None = None):
        super().__init__(signum)
        self.signum, self.state, self.saved = signum, state, saved


class Run(NamedTuple):
    """Everything fixed for the length of a run: what handlers and the host loop read."""

    spec: Any               # what a step computes (static)
    hparams: Any            # the traced numbers the spec reads
    x: jax.Array            # (N, ...) training inputs on the device
    y: jax.Array            # (N, ...) training targets
    epochs: int
    steps_per_epoch: int
    program: Callable       # the compiled chunk
    capacity: int           # the most steps one chunk runs
    compile_seconds: float
    loss_floor: float = 0.0             # the divergence rule's least reference loss (chance level)
    validate: Callable | None = None    # params -> {"val_loss": .., "val_accuracy": ..} after each epoch
    save: Callable | None = None        # (path, state, history, partial) -> writes a checkpoint
    config: Any = None                  # the ``TrainConfig`` of a run built by ``fit``


class Event(NamedTuple):
    """What handlers see: ``kind`` is "start", "chunk", "epoch" or "end"."""

    kind: str
    run: Run
    state: Any                 # after the chunk (for "end": the state the run stops with)
    previous: Any              # before the chunk: the last state known good
    losses: np.ndarray         # this chunk's per-step losses
    history: list              # epoch records so far
    seconds: float             # this chunk's wall time
    reason: str = ""           # for "end": "done", "early-stop", "SIGINT", "SIGTERM", "diverged"
    partial: dict = {}         # the current epoch's loss sum and seconds so far (for checkpoints)


class StopRun(Exception):
    """Raised by a handler to end the run at this chunk boundary; ``reason`` is reported in "end"."""

    def __init__(self, reason: str, signum: int = 0):
        super().__init__(reason)
        self.reason, self.signum = reason, signum
