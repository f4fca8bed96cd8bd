"""What the engine's host loop and its handlers exchange: the ``Run`` (fixed for a run), the ``Event``
each handler receives between chunks, and the exceptions that end a run.

Kept apart from ``engine`` so that ``handlers`` (which the engine's ``train`` installs) and the engine
both import it, and neither imports the other.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Run", "Event", "StopRun", "DivergenceError", "Interrupted", "CaughtSignals"]


class DivergenceError(ArithmeticError):
    """Training diverged (a non-finite loss or params, or the loss far above its start)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal at a chunk boundary; ``state`` is where it stopped.

    Attributes:
        signum: the signal's number.
        state: the run's state at the stop.
        saved: the checkpoint holding that state, or None.
        meta: what a checkpoint of this stop holds beside the state (``history``, the partial epoch's
            ``partial``, the batch size and data it ran on); ``jaxmlp.train(resume=interrupted)`` continues
            from it exactly.
    """

    def __init__(self, signum: int, state: Any, saved: str | os.PathLike | None = None, meta: dict | None = None):
        super().__init__(signum)
        self.signum, self.state, self.saved, self.meta = signum, state, saved, dict(meta or {})

    @property
    def history(self) -> list:
        """The epoch records of the run up to the stop."""
        return list(self.meta.get("history", []))

    @property
    def partial(self) -> dict:
        """The stopped epoch's loss sum and seconds so far."""
        return dict(self.meta.get("partial", {}))


class CaughtSignals:
    """SIGINT and SIGTERM noted instead of acted on, inside a ``with`` block: ``received`` is the first
    one's number (0: none), for a loop to stop at its next safe point. Handlers are installed only in
    the main thread (Python allows no other) and the previous ones are restored on leaving the block.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self.previous: dict = {}

    def _catch(self, signum, frame) -> None:
        self.received = self.received or signum

    def __enter__(self) -> CaughtSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._catch) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


class Run(NamedTuple):
    """Everything fixed for the length of a run: what handlers and the host loop read.

    Attributes:
        spec: what a step computes (static).
        hparams: the traced numbers the spec reads.
        x: (N, ...) training inputs on the device.
        y: (N, ...) training targets.
        epochs: the epoch the run stops after.
        steps_per_epoch: minibatches in one epoch, the last one short when needed.
        program: the compiled chunk.
        capacity: the most steps one chunk runs.
        compile_seconds: the time spent compiling ``program``.
        loss_floor: the divergence rule's least reference loss (chance level).
        validate: ``params -> {"val_loss": .., "val_accuracy": ..}`` after each epoch, or None.
        save: ``(path, state, history, partial)`` -> writes a checkpoint, or None.
        config: the ``TrainConfig`` of a run built by ``fit`` (None for ``train``).
    """

    spec: Any
    hparams: Any
    x: jax.Array
    y: jax.Array
    epochs: int
    steps_per_epoch: int
    program: Callable
    capacity: int
    compile_seconds: float
    loss_floor: float = 0.0
    validate: Callable | None = None
    save: Callable | None = None
    config: Any = None


class Event(NamedTuple):
    """What handlers see, before the first chunk, after each chunk and epoch, and at the end.

    Attributes:
        kind: "start", "chunk", "epoch" or "end".
        run: the ``Run``, fixed for the length of the run.
        state: the ``TrainState`` after the chunk (for "end": the state the run stops with).
        previous: the state before the chunk: the last one known good.
        losses: this chunk's per-step losses, (steps,).
        history: the epoch records so far.
        seconds: this chunk's wall time.
        reason: for "end": "done", "early-stop", "SIGINT", "SIGTERM", "diverged" or "error" (any other
            exception, which propagates after the "end" event).
        partial: the current epoch's loss sum and seconds so far (for checkpoints).
    """

    kind: str
    run: Run
    state: Any
    previous: Any
    losses: np.ndarray
    history: list
    seconds: float
    reason: str = ""
    partial: dict = {}


class StopRun(Exception):
    """Raised by a handler to end the run at this chunk boundary; ``reason`` is reported in "end".

    Args:
        reason: why the run stops, such as "early-stop"; the run's result and its "end" event carry it.
        signum: the signal that asked for the stop (SIGINT, SIGTERM), or 0 for a handler's own decision.
    """

    def __init__(self, reason: str, signum: int = 0):
        super().__init__(reason)
        self.reason, self.signum = reason, signum
