"""The training engine: any pure loss, any params PyTree, any optimizer, in compiled chunks of steps.

* ``train(loss_fn, params, optimizer, data, ...)``: the public entry. ``loss_fn(params, x, y, key)``
  returns a scalar (or ``(scalar, aux)`` with ``has_aux=True``); ``optimizer`` is anything with
  ``init``/``update`` in optax's protocol (``jaxmlp.optim`` or optax itself).
* ``TrainState``: the whole state of a run as one PyTree: params, optimizer state, the run's PRNG
  key, completed epochs and steps done in the current epoch. Epoch ``e``'s order of examples and
  every step's key are pure functions of (key, e, step), so any step can be addressed: a run stopped
  anywhere and resumed equals the uninterrupted run bit for bit.
* ``chunk``: the compiled unit, up to ``capacity`` steps of one epoch (a traced count, so any count
  up to the capacity runs the same executable). The short last batch of an epoch is a second branch
  of the same program. ``fused_epoch`` is a whole epoch as one ``lax.scan`` (``jaxmlp bench``).
  These live in ``chunks.py`` and are re-exported here.
* ``compile_program``: chunk programs compiled ahead of time, found again by what they compute and
  kept in a bounded cache.
* ``advance``: the host loop, chunk after chunk, calling handlers (``handlers.py``: progress, logs,
  checkpoints, signals, divergence) between them with an ``events.Event``.
* ``train`` resumes through ``resume.py`` (where a run starts again, what must not have changed).

What a step computes is a static, hashable *spec*: ``FunctionTask`` wraps a user's loss and
optimizer; ``runs.TrainSpec`` is the built-in MLP/CNN described by a ``TrainConfig``. A spec has
``batch_size``, ``batch_sharding``, ``value_and_grad(params, x, y, key, hparams) -> ((loss, aux),
grads)``, ``optimizer_for(hparams)`` and ``augment_batch(key, x)``. ``hparams`` is a PyTree of traced numbers
(the built-in path's lr, momentum, ...: changing them never recompiles; sweeps vmap over them).
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import handlers as h
from ._compat import enable_x64
from .checkpoint import describe_tree
from .checks import check_count, check_loss_fn, check_params
from .chunks import (  # the compiled side, re-exported: jaxmlp.engine keeps every name it had
    FunctionTask,
    TrainState,
    batch_slices as batch_slices,
    chunk,
    epoch_order,
    fused_epoch,
    init_state,
    precision,
    run_chunk,
    run_fused_epoch as run_fused_epoch,
    steps_per_epoch,
)
from .events import CaughtSignals, DivergenceError, Event, Interrupted, Run, StopRun
from .loop import Loop as Loop, advance, epoch_loss as epoch_loss, loss_sum as loss_sum  # re-exported
from .resume import check_unchanged, fingerprint, resume_from, save_plain

__all__ = ["train", "TrainResult", "TrainState", "FunctionTask", "init_state", "chunk", "fused_epoch",
           "epoch_order", "steps_per_epoch", "advance", "Event", "StopRun", "DivergenceError", "Interrupted",
           "Run", "precision", "compile_program", "build_run"]


MAX_PROGRAMS = 16  # compiled programs kept in this process, the least recently used dropped first
_COMPILED: dict = {}  # what a program computes -> (executable, compile seconds); order: least recent first
_BUILT: dict = {}  # (function, statics, argument signature) -> program key: no lowering for statics seen before
_COMPILED_LOCK = threading.Lock()


def _arg_signature(v) -> tuple:
    """(shape, dtype, placement), the same for an array on the default device and for an abstract
    ``jax.ShapeDtypeStruct``, so a program compiled from shapes alone is found again later."""
    sharding = getattr(v, "sharding", None)
    if sharding is None:
        sharding = ("single", jax.devices()[0])
    elif isinstance(sharding, jax.sharding.SingleDeviceSharding):
        sharding = ("single", next(iter(sharding.device_set)))
    return tuple(jnp.shape(v)), jnp.result_type(v), sharding


def _program_key(lowered, leaves: list) -> tuple | None:
    """What a lowered program computes: its HLO text (hashed; constants, dtypes and the matmul precision
    are in it), its argument and result trees and where its arguments live. None when the lowering
    passes constants beside the text, which the text then does not show."""
    if getattr(getattr(lowered, "_lowering", None), "const_args", None):
        return None
    text = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    return text, lowered.in_tree, lowered.out_tree, tuple(map(_arg_signature, leaves))


def _seen_key(fn, static: dict, args: tuple) -> tuple | None:
    """What identifies a program built before from the same function, statics (compared by value) and
    argument shapes, or None when a static compares by identity (``FunctionTask.by_value``)."""
    if not all(getattr(v, "by_value", True) for v in static.values()):
        return None
    leaves, treedef = jax.tree_util.tree_flatten(args)
    # The matmul precision and x64 change the HLO but no argument: they must be part of the key.
    seen = (fn, tuple(sorted(static.items())), treedef, tuple(map(_arg_signature, leaves)),
            jax.config.read("jax_enable_x64"), jax.config.jax_default_matmul_precision)  # type: ignore[attr-defined]
    try:
        hash(seen)
    except TypeError:
        return None
    return seen


def _keep(cache: dict, key, value) -> None:
    """``cache[key] = value`` as its most recent entry, the oldest dropped past ``MAX_PROGRAMS``."""
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > MAX_PROGRAMS:
        del cache[next(iter(cache))]


def compile_program(fn, static: dict, *args, options: dict | None = None) -> tuple[Callable, float]:
    """The ahead-of-time compiled ``fn(*args, **static)`` and the seconds spent lowering and compiling
    it (0.0 when this process compiled the same program before: runs never recompile).

    Programs are found again by what they compute (the lowered HLO), not by the objects that built
    them: an optimizer built twice, ``optim.sgd(0.1)``, compiles once. At most ``MAX_PROGRAMS`` are
    kept, the least recently used dropped first. Statics seen before skip even the lowering.

    Args:
        fn: a function or its ``jax.jit`` wrapper (only its static arguments are used, as keywords).
        static: its static keyword arguments.
        *args: arrays or ``jax.ShapeDtypeStruct`` s of its positional arguments.
        options: XLA compiler options for this program (``Lowered.compile``'s), part of what
            identifies it; None: XLA's defaults.

    Returns:
        ``(program, seconds)``: the compiled callable, and the lowering and compile time.
    """
    chosen = tuple(sorted((options or {}).items()))
    seen = _seen_key(fn, static, args)
    seen = None if seen is None else (seen, chosen)
    with _COMPILED_LOCK:
        key = _BUILT.get(seen) if seen is not None else None
        if key is not None and key in _COMPILED:
            _keep(_COMPILED, key, _COMPILED[key])
            return _COMPILED[key][0], 0.0
    t0 = time.perf_counter()
    # A fresh jit with the statics bound: JAX's own caches, keyed by that function object, go with it,
    # so a run's new optimizer or loss leaves nothing behind but the bounded caches' entries.
    lowered = jax.jit(functools.partial(getattr(fn, "__wrapped__", fn), **static)).lower(*args)
    key = _program_key(lowered, jax.tree_util.tree_leaves(args))
    key = None if key is None else (key, chosen)
    with _COMPILED_LOCK:
        hit = _COMPILED.get(key) if key is not None else None
        if hit is not None:
            _keep(_COMPILED, key, hit)
            if seen is not None:
                _keep(_BUILT, seen, key)
            return hit[0], 0.0
    program = lowered.compile(dict(chosen) if chosen else None)
    seconds = time.perf_counter() - t0
    if key is not None:
        with _COMPILED_LOCK:
            _keep(_COMPILED, key, (program, seconds))
            if seen is not None:
                _keep(_BUILT, seen, key)
    return program, seconds


# ---------------------------------------------------------------- the public entry


class TrainResult(NamedTuple):
    """What ``train`` returns.

    Attributes:
        params: the final params (``state.params``).
        opt_state: the final optimizer state (``state.opt_state``).
        state: the whole final ``TrainState`` (resume from it, or checkpoint it).
        history: one record per completed epoch: ``{"epoch", "loss", "seconds", ...}`` and aux means.
        reason: why the run ended: "done", or a handler's ``StopRun`` reason such as "early-stop".
        compile_seconds: the time spent compiling the chunk program.
    """

    params: Any
    opt_state: Any
    state: TrainState       # the whole final state (resume from it, or checkpoint it)
    history: list           # [{"epoch", "loss", "seconds", aux means...}] per completed epoch
    reason: str             # "done", "early-stop", ...
    compile_seconds: float


def compile_aside(fn, static: dict, *args, options: dict | None = None) -> concurrent.futures.Future:
    """``compile_program(fn, static, *args, options=options)`` on a second thread; the future's result is its
    ``(program, seconds)``. XLA compiles without the GIL, so what the caller does meanwhile (drawing
    params, copying data to the device) overlaps the compile. The thread inherits this thread's x64
    mode and matmul precision (JAX keeps both per thread).

    Args:
        fn: as ``compile_program``'s.
        static: its static keyword arguments.
        *args: arrays or ``jax.ShapeDtypeStruct`` s of its positional arguments.
        options: XLA compiler options, as ``compile_program``'s.

    Returns:
        A ``concurrent.futures.Future`` of ``(program, seconds)``.
    """
    x64 = jax.config.jax_enable_x64  # type: ignore[attr-defined]
    matmul = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]

    def work():
        with enable_x64(x64), jax.default_matmul_precision(matmul):
            return compile_program(fn, static, *args, options=options)

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(work)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def build_run(spec, state: TrainState, x, y, epochs: int, hparams: Any = None, *, mesh: Any = None,
              compiled: tuple | None = None, **extra) -> tuple[Run, TrainState]:
    """The ``Run`` of ``spec`` on (x, y) for ``epochs`` and the state placed for it: the chunk program
    compiled for exactly the placements it will be called with.

    Args:
        spec: what a step computes (``FunctionTask`` or ``runs.TrainSpec``).
        state: the starting state.
        x: (N, ...) inputs on the device.
        y: (N, ...) targets.
        epochs: the epoch to stop after.
        hparams: the traced numbers the spec reads (None: ``{}``).
        mesh: a ``jax.sharding.Mesh`` to split every minibatch over its devices.
        compiled: ``(program, seconds)`` already compiled for these shapes on one device
            (``compile_aside`` of ``run_chunk``), or None to compile here.
        **extra: other ``Run`` fields (``loss_floor``, ``validate``, ``save``, ``config``).

    Returns:
        ``(run, state)``: the ``Run`` and the state placed on its devices.
    """
    hparams = {} if hparams is None else hparams
    n = x.shape[0]
    capacity = steps_per_epoch(n, spec.batch_size)
    if compiled is not None and mesh is None:
        return Run(spec, hparams, x, y, epochs, capacity, compiled[0], capacity, compiled[1], **extra), state
    order = jnp.zeros((n,), jnp.int32)
    if mesh is not None:
        from .parallel import distribute, replicate

        spec, (state, x, y) = distribute(mesh, spec, (state, x, y))
        hparams, order = replicate(hparams, mesh), replicate(order, mesh)
    program, seconds = compile_program(run_chunk, {"spec": spec, "capacity": capacity}, state, order, x, y,
                                       hparams, jnp.int32(0))
    return Run(spec, hparams, x, y, epochs, capacity, program, capacity, seconds, **extra), state


def _as_arrays(data) -> tuple[jax.Array, jax.Array]:
    """(x, y) on the device from a pair of arrays or a ``Dataset`` (its training images, flattened
    and scaled to [0, 1])."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        from .checks import check_labels
        from .data import normalize

        images = np.asarray(data.x_train)
        if images.ndim < 2 or len(images) == 0:
            raise ValueError(f"data.x_train: expected a non-empty batch of images, got shape {images.shape}")
        labels = check_labels(data.y_train, rows=len(images), name="data.y_train")
        return normalize(images.reshape(len(images), -1)), jnp.asarray(labels.astype(np.int32))
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError("data: expected a pair of arrays (x, y) or a Dataset") from None
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"data: x and y need the same number of rows, got shapes {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("data: the training set is empty")
    return x, y


def _installed_signals() -> dict:
    """The process's SIGINT/SIGTERM handlers, to put back whatever ends a run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in CaughtSignals.SIGNALS}


def _restore_signals(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


class EndPartial:
    """A handler that keeps the "end" event's partial epoch (what ``Interrupted`` carries)."""

    def __init__(self) -> None:
        self.partial: dict = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "end":
            self.partial = dict(event.partial)


def _start(loss_fn, params, optimizer, data, epochs, batch_size, key, has_aux, augment, resume, allow_changes,
           loss_floor, mesh) -> tuple[Run, TrainState, dict, dict]:
    """``train``'s (run, starting state, resumed meta, what its checkpoints keep): arguments checked, the
    state fresh or resumed (refusing a changed batch size, data or key unless ``allow_changes``)."""
    x, y = _as_arrays(data)
    check_params(params)
    check_loss_fn(loss_fn)
    spec = FunctionTask(loss_fn, optimizer, batch_size, has_aux, augment)
    seen_data = fingerprint(x, y)
    state, meta = resume_from(resume, init_state(params, optimizer, jax.random.PRNGKey(0) if key is None else key))
    if resume is not None:
        state = check_unchanged(state, meta, batch_size=batch_size, data=seen_data, key=key,
                                num_examples=x.shape[0], allow_changes=allow_changes)
    kept = {"batch_size": batch_size, "data": seen_data, "params_tree": describe_tree(params)}
    save = functools.partial(save_plain, kept=kept)
    run, state = build_run(spec, state, x, y, epochs, mesh=mesh, loss_floor=loss_floor or 0.0, save=save)
    return run, state, meta, kept


def train(loss_fn: Callable, params: Any, optimizer: Any, data: Any, *, epochs: int = 1, batch_size: int = 32,
          key: jax.Array | None = None, has_aux: bool = False, augment: Callable | None = None,
          handlers: Sequence[Callable] = (), progress: bool = False, checkpoint: str | os.PathLike | None = None,
          resume: Any = None, allow_changes: bool = False, divergence: bool = True,
          loss_floor: float | None = None, mesh: Any = None, chunk_steps: int | None = None,
          signals: bool = True) -> TrainResult:
    """Train ``params`` to minimise ``loss_fn`` over minibatches of ``data`` in compiled chunks.

    Args:
        loss_fn: ``(params, x, y, key) -> scalar`` (or ``-> (scalar, aux)`` with ``has_aux``; aux a
            dict of scalars, averaged per epoch into the history); ``x`` (B, ...) and ``y`` (B, ...) are
            one minibatch, ``key`` that step's PRNG key (for dropout).
        params: any PyTree of arrays.
        optimizer: anything with ``init(params)`` and ``update(grads, state, params)`` (hashable or not).
        data: a pair of arrays ``(x, y)`` with the same number of rows N, or a ``Dataset`` (its
            training images, flattened and scaled to [0, 1], and labels).
        epochs: train until this many epochs are complete (a resumed run continues to it).
        batch_size: examples per step (an epoch's last batch is short when it doesn't divide N).
        key: the run's PRNG key, raw (``PRNGKey``) or typed (``jax.random.key``); it shuffles and gives
            every step its key. Default ``PRNGKey(0)``; a resumed run keeps its own unless one is given.
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        augment: ``(key, x) -> x`` applied to each minibatch on the device, fresh every step.
        handlers: callables given each ``engine.Event`` between chunks (see ``jaxmlp.handlers``).
        progress: a progress bar and a line per epoch on stderr.
        checkpoint: a path saved after every epoch and where a signal stops the run.
        resume: where an earlier ``train`` of the same setup stopped: its checkpoint path or the
            ``Interrupted`` it raised (history and partial epoch continue exactly), or a ``TrainState``.
        allow_changes: resume even though the batch size, the data or the key differ from the saved
            run's (refused with a ValueError naming both values otherwise).
        divergence: stop with ``DivergenceError`` when a chunk's mean loss passes 10x the run's first
            loss (kept across resume), and always on a non-finite loss or params.
        loss_floor: the least start for that rule (e.g. ``log(num_classes)``); None: the first loss.
        mesh: a ``jax.sharding.Mesh`` to split every minibatch over its devices.
        chunk_steps: steps per compiled chunk (default: sized to take about a quarter second).
        signals: SIGINT/SIGTERM stop at the next chunk boundary (False: the process's handlers are left
            alone); whatever ends the run, the handlers it found are put back.

    Returns:
        A ``TrainResult``. A signal stop saves that exact step in the checkpoint (if any) and raises
        ``Interrupted`` with the state, history and partial epoch (``train(resume=interrupted)``).
    """
    batch_size, epochs = check_count(batch_size, "batch_size"), check_count(epochs, "epochs")
    chunk_steps = None if chunk_steps is None else check_count(chunk_steps, "chunk_steps")
    run, state, meta, kept = _start(loss_fn, params, optimizer, data, epochs, batch_size, key, has_aux, augment,
                                    resume, allow_changes, loss_floor, mesh)
    chain = [*h.default_checks(divergence), *handlers, h.ProgressReport(quiet=not progress)]
    if checkpoint is not None:
        chain.append(h.Checkpointer(checkpoint))
    end = EndPartial()
    previous = _installed_signals() if signals else {}
    try:
        state, history, reason = advance(run, state, [*chain, end, *([h.SignalStop()] if signals else [])],
                                         history=meta.get("history", ()), partial=meta.get("partial"),
                                         chunk_steps=chunk_steps)
    finally:  # a handler's error, a failed save: the process's own handlers come back all the same
        _restore_signals(previous)
    if reason.startswith("SIG"):
        raise Interrupted(int(signal.Signals[reason]), state, checkpoint,
                          {"history": history, "partial": end.partial, **kept})
    return TrainResult(state.params, state.opt_state, state, history, reason, run.compile_seconds)

