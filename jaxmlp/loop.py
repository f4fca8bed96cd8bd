"""The host side of a run: the loop that advances a ``TrainState`` chunk by chunk to its last epoch.

``advance`` calls the compiled chunk (``Run.program``), sizes the chunks to take about a quarter
second, keeps the epoch's example-weighted loss, and gives every handler an ``Event`` before the first
chunk, after each chunk and epoch, and at the end (on any error too). ``engine.build_run`` makes the
``Run``; ``engine.train`` and ``runs.fit`` call ``advance``.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from .chunks import TrainState, epoch_order
from .events import DivergenceError, Event, Run, StopRun
from .parallel import to_host

__all__ = ["advance", "Loop", "epoch_loss", "loss_sum"]


def epoch_loss(batch_losses, num_examples: int, batch_size: int, first_step: int = 0) -> float:
    """Example-weighted mean of per-batch losses of steps ``first_step..``: the short last batch counts
    by its size. (Sums over chunks: pass each chunk's losses and add ``loss_sum`` instead.)"""
    return loss_sum(batch_losses, num_examples, batch_size, first_step) / num_examples


def loss_sum(batch_losses, num_examples: int, batch_size: int, first_step: int = 0) -> float:
    """Sum over examples of the losses of steps ``first_step, first_step + 1, ...`` (float64)."""
    losses = np.asarray(batch_losses, dtype=np.float64)
    starts = (first_step + np.arange(len(losses))) * batch_size
    sizes = np.minimum(starts + batch_size, num_examples) - starts
    return float((losses * sizes).sum())


# ---------------------------------------------------------------- advancing a run


def _next_steps(steps: int, seconds: float, target: float, room: int, least: int = 1) -> int:
    """Steps for the next chunk so that it takes about ``target`` seconds: at least ``least``, at most
    ``room``."""
    if seconds > 0:
        steps = int(steps * min(max(target / seconds, 0.25), 4.0))
    return max(1, min(max(steps, least), room))


class Loop:
    """The host side of a run: picks chunk sizes, tracks the epoch's loss, builds the history."""

    def __init__(self, run: Run, history: list, partial: dict, chunk_steps: int | None, chunk_seconds: float,
                 least: int = 1):
        self.run, self.history = run, list(history)
        self.loss_sum = float(partial.get("loss_sum", 0.0))
        self.epoch_seconds = float(partial.get("seconds", 0.0))
        self.aux_sum: dict = dict(partial.get("aux_sum", {}))
        self.fixed, self.target, self.least = chunk_steps, chunk_seconds, least
        self.steps = chunk_steps or max(8, least)  # a short first chunk measures the speed

    def partial(self) -> dict:
        out = {"loss_sum": self.loss_sum, "seconds": self.epoch_seconds}
        return {**out, "aux_sum": dict(self.aux_sum)} if self.aux_sum else out

    def advance(self, state: TrainState, order) -> tuple[TrainState, np.ndarray, float]:
        run = self.run
        room = run.steps_per_epoch - int(state.step)
        steps = min(self.fixed, room) if self.fixed else _next_steps(self.steps, 0, self.target, room, self.least)
        t0 = time.perf_counter()
        new, out = run.program(state, order, run.x, run.y, run.hparams, jnp.int32(steps))
        losses, aux = out if isinstance(out, tuple) else (out, {})
        losses = np.asarray(to_host(losses))[:steps]  # waits for the device: honest timing
        seconds = time.perf_counter() - t0
        for name, value in to_host(aux).items():
            self.aux_sum[name] = self.aux_sum.get(name, 0.0) + float(np.asarray(value))
        if not self.fixed:
            self.steps = _next_steps(steps, seconds, self.target, run.steps_per_epoch, self.least)
        self.loss_sum += loss_sum(losses, run.x.shape[0], run.spec.batch_size, int(state.step))
        self.epoch_seconds += seconds
        return new, losses, seconds

    def close_epoch(self, state: TrainState) -> dict:
        run = self.run
        record = {"epoch": int(state.epoch), "loss": self.loss_sum / run.x.shape[0], "seconds": self.epoch_seconds}
        record.update({name: total / run.steps_per_epoch for name, total in self.aux_sum.items()})
        if run.validate is not None:
            record.update(run.validate(state.params))
        self.history.append(record)
        self.loss_sum = self.epoch_seconds = 0.0
        self.aux_sum = {}
        return record


def _notify(handlers: Sequence[Callable], event: Event) -> None:
    """Give ``event`` to every handler, then raise the first ``StopRun`` one of them raised: a stop hides
    no event from the handlers after it (so the epoch that stopped a run is logged and saved)."""
    stops = []
    for handler in handlers:
        try:
            handler(event)
        except StopRun as stop:
            stops.append(stop)
    if stops:
        raise stops[0]


def advance(run: Run, state: TrainState, handlers: Sequence[Callable], *, history: Sequence = (),
            partial: dict | None = None, chunk_steps: int | None = None,
            chunk_seconds: float | None = None) -> tuple[TrainState, list, str]:
    """Advance ``state`` chunk by chunk to ``run.epochs``, calling every handler with an ``Event`` at
    the start, after each chunk, after each epoch and at the end.

    Args:
        run: what stays fixed (``build_run`` or ``runs.setup``).
        state: where to start.
        handlers: callables given each ``Event``.
        history: epoch records of the run so far (a resumed run's).
        partial: the current epoch's loss sum and seconds so far, and the run's ``first_loss`` (a
            resumed run's).
        chunk_steps: a fixed chunk size (None: sized to take ``chunk_seconds``).
        chunk_seconds: target wall time of a chunk (None: ``backend.choices()``).

    Returns:
        ``(final state, history, reason)``. A handler's ``StopRun`` ends the run at that boundary once
        every handler saw the event; errors propagate after the "end" event (reason "diverged" for
        ``DivergenceError``, "error" for any other). Events' ``partial`` carries the loss of the run's
        first step, ``first_loss``.
    """
    from .backend import choices

    loop = Loop(run, list(history), partial or {}, chunk_steps, chunk_seconds or choices().chunk_seconds,
                choices().min_chunk_steps)
    first = {"first_loss": partial["first_loss"]} if partial and partial.get("first_loss") is not None else {}

    def emit(kind, new, old, losses=None, seconds=0.0, reason=""):
        _notify(handlers, Event(kind, run, new, old, np.zeros(0) if losses is None else losses, loop.history,
                                seconds, reason, {**loop.partial(), **first}))

    emit("start", state, state)
    order, reason, n, good = None, "done", run.x.shape[0], state
    try:
        while int(state.epoch) < run.epochs:
            if order is None:
                order = epoch_order(state.key, state.epoch, n)
            new, losses, seconds = loop.advance(state, order)
            if not first and int(state.epoch) == 0 and int(state.step) == 0:  # the run's very first step
                first["first_loss"] = float(losses[0])
            good, state = state, new
            if int(state.step) == 0:  # the epoch ended: its record exists before any handler can stop
                order = None
                loop.close_epoch(state)
            emit("chunk", state, good, losses, seconds)
            if order is None:
                emit("epoch", state, state)
    except StopRun as stop:
        reason = stop.reason
    except BaseException as err:  # the handlers see "end" whatever stops the run: signals back, files closed
        with contextlib.suppress(Exception) if not isinstance(err, DivergenceError) else contextlib.nullcontext():
            emit("end", good, good, reason="diverged" if isinstance(err, DivergenceError) else "error")
        raise
    emit("end", state, state, reason=reason)
    return state, loop.history, reason
