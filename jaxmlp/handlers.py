"""Small handlers that ``engine.advance`` calls between compiled chunks.

A handler is a callable taking an ``engine.Event`` (kind "start", "chunk", "epoch" or "end"); it may
raise ``engine.StopRun`` to end the run at that boundary (the handlers after it still see the event, so
the epoch that stopped a run is logged and saved), or ``engine.DivergenceError``. Each does one
thing: the checks that ``fit`` always runs (finiteness, the divergence rule, early stopping) and the
ones the CLI adds (progress, the JSONL log, checkpoints, signals).

The divergence rule (``divergence.diverged``): a chunk whose mean loss exceeds ten times the larger of the
run's first recorded loss (measured before any update, kept across resume) and chance level (ln of the number
of classes) means the run blew up, even when every number stays finite.
"""
from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .divergence import DIVERGENCE_FACTOR, NON_FINITE_LOSS, diverged, message, reference_loss
from .events import CaughtSignals, DivergenceError, Event, StopRun
from .parallel import agreed
from .progress import Progress


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def _where(event: Event, reason: str) -> str:
    prev = event.previous
    if reason == NON_FINITE_LOSS:  # the first bad step
        bad = int(np.argmin(np.isfinite(event.losses)))
        return f"at epoch {int(prev.epoch) + 1}, step {int(prev.step) + bad + 1}"
    return f"in epoch {int(prev.epoch) + 1}, steps {int(prev.step) + 1}-{int(prev.step) + len(event.losses)} of " \
           f"{event.run.steps_per_epoch}"


def check_finite(event: Event) -> None:
    """DivergenceError when the losses of the chunk that ``event`` reports, or the params it produced,
    are not finite (``divergence.diverged`` without its factor rule).

    Args:
        event: any ``Event``; only "chunk" events are checked.
    """
    if event.kind != "chunk":
        return
    finite = bool(_all_finite(event.state.params)) if np.all(np.isfinite(event.losses)) else True
    reason = str(diverged(event.losses, 0.0, rule=False, params_finite=finite))
    if reason:
        raise DivergenceError(message(reason, _where(event, reason)))


def run_start(event: Event) -> float:
    """The run's first recorded loss, the divergence rule's start.

    Args:
        event: a "chunk" event. Its ``partial["first_loss"]`` (the loss of the run's first step, which the
            engine records and checkpoints keep), else its history's first epoch loss (a run resumed from
            a bare state), else its own first loss.

    Returns:
        That loss, a Python float.
    """
    if event.partial.get("first_loss") is not None:
        return float(event.partial["first_loss"])
    if event.history:
        return float(event.history[0]["loss"])
    return float(event.losses[0])


class DivergenceRule:
    """DivergenceError when a chunk's mean loss passes ``factor`` x max(the run's first recorded loss,
    ``run.loss_floor``) (``divergence.diverged``; ``run_start`` says which loss).

    Args:
        factor: the multiple of the start that counts as divergence; DIVERGENCE_FACTOR (10) by default.
    """

    def __init__(self, factor: float = DIVERGENCE_FACTOR):
        self.factor = factor
        self.start: float | None = None

    def __call__(self, event: Event) -> None:
        if event.kind != "chunk" or not len(event.losses):
            return
        if self.start is None:  # the run's start, taken before any update: never a resumed chunk's first loss
            self.start = float(reference_loss(run_start(event), event.run.loss_floor or 0.0))
        reason = str(diverged(event.losses, self.start, self.factor))
        if reason:
            raise DivergenceError(message(reason, _where(event, reason), float(np.mean(event.losses)), self.start,
                                          self.factor))


def default_checks(divergence: bool = True) -> list:
    """The checks every run makes.

    Args:
        divergence: include the factor rule.

    Returns:
        ``[check_finite, DivergenceRule()]``, or ``[check_finite]`` when ``divergence`` is False.
    """
    return [check_finite, DivergenceRule()] if divergence else [check_finite]


class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation accuracy; keep the best params.

    Args:
        patience: epochs without improvement before the stop; 0 never stops.
    """

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

    def __init__(self) -> None:
        self.caught = CaughtSignals()

    @property
    def received(self) -> int:
        """The number of the first signal since the run started, or 0 for none."""
        return self.caught.received

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.caught.__enter__()
        elif event.kind == "epoch" or (event.kind == "chunk" and int(event.state.step)):
            # At an epoch's end, stop after its "epoch" event, so logs and checkpoints record it. With
            # several processes, a signal that reached any one of them stops all at this chunk.
            received = agreed(self.caught.received)
            if received:
                raise StopRun(signal.Signals(received).name, received)
        elif event.kind == "end":
            self.caught.__exit__(None, None, None)


class Checkpointer:
    """Save the run to ``path`` after every epoch, every ``every_seconds`` / ``every_steps``, and at
    the exact step where a signal stopped it. ``saved`` is the last (epoch, step) written.

    Args:
        path: the checkpoint file.
        every_seconds: also save when this many seconds passed since the last save (None: not by time).
        every_steps: also save every this many steps (None: not by steps).

    With ``best`` (an ``EarlyStopping``, set by ``keep_best``) a run that ends reporting its best
    validation epoch's params, when they are not the final state's, also writes them beside the
    checkpoint (``best_path``) and names them in the checkpoint's ``partial["best"]``: the checkpoint
    resumes from its last state, and ``runs.load_model`` gives the model the run reported.
    """

    def __init__(self, path, every_seconds: float | None = None, every_steps: int | None = None):
        self.path, self.every_seconds, self.every_steps = path, every_seconds, every_steps
        self.saved: tuple[int, int] | None = None
        self.best: EarlyStopping | None = None
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
        elif event.kind == "end" and event.reason != "diverged":
            self._save_best(event)
        if event.kind == "end":
            self.best = None  # kept for one run: keep_best links it again

    def _save_best(self, event: Event) -> None:
        best = self.best
        if best is None or best.best_params is None or self.saved is None or event.run.save is None:
            return  # no best params kept, or no checkpoint written
        if (best.best_epoch, 0) == (int(event.state.epoch), int(event.state.step)):
            return  # the state's params are the best
        from .checkpoint import save_checkpoint
        from .parallel import to_host

        beside = best_path(self.path)
        save_checkpoint(beside, to_host(best.best_params), {"best_epoch": best.best_epoch})
        partial = {**event.partial, "best": {"epoch": best.best_epoch, "file": beside.name}}
        event.run.save(self.path, event.state, event.history, partial)


def keep_best(early: EarlyStopping, chain: Sequence[Callable]) -> list:
    """``[early, *chain]``, every ``Checkpointer`` of ``chain`` told to keep ``early``'s best params when
    the run ends, so that its checkpoint's model is the one the run reports (``fit`` tests it).

    Args:
        early: the run's ``EarlyStopping``.
        chain: the handlers that follow it.

    Returns:
        The handler list ``[early, *chain]``.
    """
    for handler in chain:
        if isinstance(handler, Checkpointer):
            handler.best = early
    return [early, *chain]


def best_path(path) -> Path:
    """Where the checkpoint at ``path`` keeps its run's best params: ``es.npz`` -> ``es.best.npz``.

    Args:
        path: the checkpoint file.

    Returns:
        The best params' file beside it.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.best{path.suffix}")


def best_params(path, meta: dict, params: Any) -> Any:
    """The params the run of the checkpoint at ``path`` reported: its best validation epoch's when the
    checkpoint names them (``partial["best"]``, see ``Checkpointer``), else ``params``.

    Args:
        path: the checkpoint file.
        meta: its meta (``checkpoint.read_meta``).
        params: its state's params, the template the best ones must match exactly (shapes, dtypes).

    Returns:
        The params. Raises ``checkpoint.CheckpointError`` naming the file when they are named but
        cannot be read.
    """
    best = (meta.get("partial") or {}).get("best")
    if best is None:
        return params
    from .checkpoint import CheckpointError, load_state

    name = best.get("file") if isinstance(best, dict) else None
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise CheckpointError(f"{path}: meta 'partial.best' must name a file beside the checkpoint, got "
                              f"{str(best)[:80]!r}")
    return load_state(Path(path).with_name(name), params)


class JsonlLog:
    """Append one JSON line per epoch to ``path`` (live monitoring: ``tail -f``).

    Args:
        path: the log file, opened for appending when the run starts.
    """

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
    """A line when training starts, a bar that moves inside epochs (steps/s, ETA) and a line per
    epoch. The bar draws only on a terminal.

    Args:
        quiet: write no lines.
        stream: where to write (None: stderr).
    """

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
