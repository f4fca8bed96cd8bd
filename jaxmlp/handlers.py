"""Small handlers that ``engine.advance`` calls between compiled chunks.

A handler is a callable taking an ``engine.Event`` (kind "start", "chunk", "epoch" or "end"); it may
raise ``engine.StopRun`` to end the run at that boundary, or ``engine.DivergenceError``. Each does one
thing: the checks that ``fit`` always runs (finiteness, the divergence rule, early stopping) and the
ones the CLI adds (progress, the JSONL log, checkpoints, signals).

The divergence rule: a chunk whose mean loss exceeds ten times the larger of the run's first loss
(measured before any update) and chance level (ln of the number of classes) means the run blew up, even when every
number stays finite (``--lr 1e4`` ends near loss 4000 at 10% accuracy). Healthy training never gets
there: its loss starts near chance and falls.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .events import DivergenceError, Event, StopRun
from .progress import Progress

DIVERGENCE_FACTOR = 10.0


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def _where(event: Event) -> str:
    run, prev = event.run, event.previous
    return f"epoch {int(prev.epoch) + 1}, steps {int(prev.step) + 1}-{int(prev.step) + len(event.losses)} of " \
           f"{run.steps_per_epoch}"


def check_finite(event: Event) -> None:
    """DivergenceError when the losses of the chunk that ``event`` reports, or the params it produced,
    are not finite."""
    if event.kind != "chunk":
        return
    if not np.all(np.isfinite(event.losses)):
        bad = int(np.argmin(np.isfinite(event.losses)))
        raise DivergenceError(f"the loss became non-finite at epoch {int(event.previous.epoch) + 1}, step "
                              f"{int(event.previous.step) + bad + 1}; training stopped (try a lower --lr)")
    if not bool(_all_finite(event.state.params)):
        raise DivergenceError(f"the parameters became non-finite in {_where(event)}; training stopped "
                              f"(try a lower --lr)")


class DivergenceRule:
    """DivergenceError when a chunk's mean loss passes ``factor`` x max(first loss, chance level); the
    default factor is DIVERGENCE_FACTOR (10)."""

    def __init__(self, factor: float = DIVERGENCE_FACTOR):
        self.factor = factor
        self.start: float | None = None

    def __call__(self, event: Event) -> None:
        if event.kind != "chunk" or not len(event.losses):
            return
        mean = float(np.mean(event.losses))
        if self.start is None:  # the run's (or the resumed run's) first loss, taken before any update
            self.start = max(float(event.losses[0]), event.run.loss_floor)
        if mean > self.factor * self.start:
            raise DivergenceError(
                f"the loss rose to {mean:.4g} in {_where(event)}, over {self.factor:g}x its start "
                f"({self.start:.4g}): the run diverged; training stopped (try a lower --lr, or "
                f"--no-divergence-check)")


def default_checks(divergence_rule: bool = True) -> list:
    """The checks every run makes: ``check_finite``, and a fresh ``DivergenceRule`` unless
    ``divergence_rule`` is False."""
    return [check_finite, DivergenceRule()] if divergence_rule else [check_finite]


class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation accuracy; keep the best params."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch = patience, -1.0, 0
        self.best_params: Any = None

    def __call__(self, event: Event) -> None:
        if event.kind != "epoch" or not self.patience or "val_accuracy" not in event.history[-1]:
            return
        record = event.history[-1]
        if record["val_accuracy"] > self.best:
            self.best, self.best_epoch, self.best_params = record["val_accuracy"], record["epoch"], event.state.params
        elif record["epoch"] - self.best_epoch >= self.patience:
            raise StopRun("early-stop")


class SignalStop:
    """SIGINT and SIGTERM stop the run at the next chunk boundary instead of killing it mid-step.

    Installed at "start" (main thread only) and restored at "end", so a second signal during the
    final save is only counted: the save finishes (and writes are atomic in any case).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict = {}

    def _catch(self, signum, frame) -> None:
        self.received = self.received or signum

    def __call__(self, event: Event) -> None:
        main = threading.current_thread() is threading.main_thread()
        if event.kind == "start" and main:
            self.previous = {s: signal.signal(s, self._catch) for s in self.SIGNALS}
        elif self.received and (event.kind == "epoch" or (event.kind == "chunk" and int(event.state.step))):
            # At an epoch's end, stop after its "epoch" event, so logs and checkpoints record it.
            raise StopRun(signal.Signals(self.received).name, self.received)
        elif event.kind == "end":
            for s, handler in self.previous.items():
                signal.signal(s, handler)
            self.previous = {}


class Checkpointer:
    """Save the run to ``path`` after every epoch, every ``every_seconds`` / ``every_steps``, and at
    the exact step where a signal stopped it. ``saved`` is the last (epoch, step) written."""

    def __init__(self, path, every_seconds: float | None = None, every_steps: int | None = None):
        self.path, self.every_seconds, self.every_steps = path, every_seconds, every_steps
        self.saved: tuple[int, int] | None = None
        self._last_time, self._steps = time.monotonic(), 0

    def _save(self, event: Event) -> None:
        where = (int(event.state.epoch), int(event.state.step))
        if where != self.saved:
            if event.run.save is None:
                raise ValueError("Checkpointer: this run has no checkpoint writer (Run.save)")
            event.run.save(self.path, event.state, event.history, event.partial)
            self.saved, self._last_time, self._steps = where, time.monotonic(), 0

    def __call__(self, event: Event) -> None:
        if event.kind == "chunk":
            self._steps += len(event.losses)
            due_time = self.every_seconds and time.monotonic() - self._last_time >= self.every_seconds
            if due_time or (self.every_steps and self._steps >= self.every_steps):
                self._save(event)
        elif event.kind == "epoch" or (event.kind == "end" and event.reason.startswith("SIG")):
            self._save(event)


class JsonlLog:
    """Append one JSON line per epoch to ``path`` (live monitoring: ``tail -f``)."""

    def __init__(self, path):
        self.path, self.file = path, None

    def __call__(self, event: Event) -> None:
        import json

        if event.kind == "start":
            self.file = open(self.path, "a")
        elif event.kind == "epoch" and self.file is not None:
            self.file.write(json.dumps({**event.history[-1], "time": time.time()}) + "\n")
            self.file.flush()
        elif event.kind == "end" and self.file is not None:
            self.file.close()
            self.file = None


class ProgressReport:
    """On stderr: a line when training starts, a bar that moves inside epochs (steps/s, ETA), a line
    per epoch, written to ``stream`` (default: stderr). ``bar`` draws only on a terminal; the lines are
    written unless ``quiet``."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet, self.stream = quiet, stream or sys.stderr
        self.bar: Progress | None = None

    def _say(self, text: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                self.bar.close()
            print(text, file=self.stream, flush=True)

    def __call__(self, event: Event) -> None:
        run = event.run
        if event.kind == "start":
            total = run.epochs * run.steps_per_epoch
            done = int(event.state.epoch) * run.steps_per_epoch + int(event.state.step)
            self.bar = Progress(total, "train", enabled=not self.quiet, stream=self.stream, unit=" steps")
            self.bar.done, self.t0, self.done0 = done, time.perf_counter(), done
            self._say(f"training: {run.steps_per_epoch} steps per epoch, epochs {int(event.state.epoch) + 1}-"
                      f"{run.epochs} (compiled in {run.compile_seconds:.1f} s)")
        elif event.kind == "chunk" and self.bar is not None:
            rate = (self.bar.done + len(event.losses) - self.done0) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(len(event.losses), postfix=f"loss {float(np.mean(event.losses)):.4f} {rate:,.0f} steps/s")
        elif event.kind == "epoch":
            r = event.history[-1]
            val = f" - val acc: {r['val_accuracy'] * 100:.2f}%" if "val_accuracy" in r else ""
            self._say(f"Epoch {r['epoch']}/{run.epochs} - Loss: {r['loss']:.4f}{val} ({r['seconds']:.1f} s)")
        elif event.kind == "end" and self.bar is not None:
            self.bar.close()
