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
* ``advance``: the host loop, chunk after chunk, calling handlers (``handlers.py``: progress, logs,
  checkpoints, signals, divergence) between them with an ``events.Event``.

What a step computes is a static, hashable *spec*: ``FunctionTask`` wraps a user's loss and
optimizer; ``runs.TrainSpec`` is the built-in MLP/CNN described by a ``TrainConfig``. A spec has
``batch_size``, ``batch_sharding``, ``value_and_grad(params, x, y, key, hparams) -> ((loss, aux),
grads)``, ``optimizer_for(hparams)`` and ``augment_batch(key, x)``. ``hparams`` is a PyTree of traced numbers
(the built-in path's lr, momentum, ...: changing them never recompiles; sweeps vmap over them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import handlers as h
from .backend import matmul_precision
from .events import DivergenceError, Event, Interrupted, Run, StopRun
from .optim import apply_updates
from .parallel import to_host

__all__ = ["train", "TrainResult", "TrainState", "FunctionTask", "init_state", "chunk", "fused_epoch",
           "epoch_order", "steps_per_epoch", "advance", "Event", "StopRun", "DivergenceError", "Interrupted",
           "Run", "precision", "compile_program", "build_run"]


@contextlib.contextmanager
def precision(dtype: str, matmul: str = "default"):
    """A context in which ``dtype`` ("float32"/"float64") arrays can exist and float32 matmuls run at
    ``matmul`` (``backend.matmul_precision``; "default" changes nothing). float64 needs JAX's x64 mode,
    switched on for the block only, so nothing outside it changes. Both settings are per thread."""
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext(), matmul_precision(matmul):
        yield


def batch_slices(num_examples: int, batch_size: int) -> list[slice]:
    """Minibatch slices of one epoch, the last one short when ``batch_size`` doesn't divide N."""
    return [slice(i, min(i + batch_size, num_examples)) for i in range(0, num_examples, batch_size)]


# ---------------------------------------------------------------- a user's step


@dataclasses.dataclass(frozen=True)
class FunctionTask:
    """What a step computes for a user's ``loss_fn`` and ``optimizer`` (static: hashed by identity).

    Args:
        loss_fn: ``(params, x, y, key) -> loss`` or ``-> (loss, aux)`` with ``has_aux``; aux a dict of
            scalars, averaged per epoch into the history.
        optimizer: anything with ``init``/``update`` (optax protocol).
        batch_size: examples per step.
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        augment_fn: None or ``(key, x) -> x``, applied to each minibatch on the device.
        batch_sharding: None or the ``jax.sharding.Sharding`` each minibatch is constrained to
            (``parallel.data_parallel_spec`` sets it).
    """

    loss_fn: Callable
    optimizer: Any
    batch_size: int = 32
    has_aux: bool = False
    augment_fn: Callable | None = None
    batch_sharding: Any = None

    def value_and_grad(self, params, x, y, key, hparams):
        del hparams
        if self.has_aux:
            (value, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(params, x, y, key)
            return (value, aux if isinstance(aux, dict) else {"aux": aux}), grads
        value, grads = jax.value_and_grad(self.loss_fn)(params, x, y, key)
        return (value, {}), grads

    def optimizer_for(self, hparams):
        del hparams
        return self.optimizer

    def augment_batch(self, key, x):
        return x if self.augment_fn is None else self.augment_fn(key, x)


# ---------------------------------------------------------------- the state and its chunks


class TrainState(NamedTuple):
    """The whole state of a run: a PyTree that checkpoints, resumes and vmaps as one value.

    Attributes:
        params: the model's params, any PyTree of arrays.
        opt_state: the optimizer's state, ``optimizer.init(params)`` advanced.
        key: (2,) uint32, the run's PRNG key: never advanced, epochs fold their index into it.
        epoch: int32 scalar, completed epochs.
        step: int32 scalar, steps done in the current epoch.
    """

    params: Any
    opt_state: Any
    key: jax.Array    # (2,) uint32, the run's key: never advanced, epochs fold their index into it
    epoch: jax.Array  # int32 (): completed epochs
    step: jax.Array   # int32 (): steps done in the current epoch


def init_state(params: Any, opt: Any, key: jax.Array) -> TrainState:
    """A fresh run: ``opt.init(params)``, epoch and step 0. key: the run's (2,) PRNG key."""
    return TrainState(params, opt.init(params), key, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _epoch_keys(key: jax.Array, epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(shuffle key, base of the step keys) of one epoch: a pure function of the run's key."""
    perm_key, step_base = jax.random.split(jax.random.fold_in(key, epoch))
    return perm_key, step_base


@functools.partial(jax.jit, static_argnames=("num_examples",))
def epoch_order(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order (num_examples,) int32 in which epoch ``epoch`` visits the examples of run ``key``."""
    return jax.random.permutation(_epoch_keys(key, epoch)[0], num_examples).astype(jnp.int32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Minibatches of ``batch_size`` in one epoch of ``num_examples``, the last one short when needed."""
    return -(-num_examples // batch_size)


def _step_fn(spec, hparams, x: jax.Array, y: jax.Array, order: jax.Array, step_base):
    """``step(params, opt_state, i) -> (params, opt_state, loss, aux)``: minibatch ``i`` of the epoch
    whose order is ``order``. Batch ``i`` is ``order[i*B:(i+1)*B]``; a short last batch is its own branch."""
    opt = spec.optimizer_for(hparams)
    bs = spec.batch_size
    num_full, rest = divmod(order.shape[0], bs)

    def update(params, opt_state, idx, i):
        aug_key, drop_key = jax.random.split(jax.random.fold_in(step_base, i))
        xb, yb = spec.augment_batch(aug_key, x[idx]), y[idx]
        if spec.batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, spec.batch_sharding)
            yb = jax.lax.with_sharding_constraint(yb, spec.batch_sharding)
        (value, aux), grads = spec.value_and_grad(params, xb, yb, drop_key, hparams)
        updates, opt_state = opt.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, value, aux

    def full(params, opt_state, i):
        return update(params, opt_state, jax.lax.dynamic_slice_in_dim(order, i * bs, bs), i)

    def short(params, opt_state, i):
        return update(params, opt_state, order[num_full * bs:], i)

    if not rest:
        return full
    if not num_full:
        return short
    return lambda params, opt_state, i: jax.lax.cond(i < num_full, full, short, params, opt_state, i)


def _aux_zeros(spec, hparams, state: TrainState, x: jax.Array, y: jax.Array):
    """Zeros shaped like one step's aux (a dict of scalars), found by tracing the step abstractly."""
    def probe(s):
        idx = jnp.zeros((min(spec.batch_size, x.shape[0]),), jnp.int32)
        return spec.value_and_grad(s.params, x[idx], y[idx], s.key, hparams)[0][1]
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(probe, state))


def chunk(state: TrainState, order: jax.Array, x: jax.Array, y: jax.Array, hparams: Any,
          num_steps: jax.Array, *, spec: Any, capacity: int) -> tuple[TrainState, Any]:
    """Advance ``state`` by ``num_steps`` (<= capacity, traced) steps of its current epoch.

    Args:
        state: the run's state.
        order: ``epoch_order(state.key, state.epoch, N)``.
        x: (N, ...) training inputs.
        y: (N, ...) training targets.
        hparams: the traced numbers ``spec`` reads (``{}`` for a ``FunctionTask``).
        num_steps: int32 scalar, traced.
        spec: what a step computes (static).
        capacity: the most steps a call runs (static): the length of the losses buffer.

    Returns the new state (the epoch counter moves on when its last step is done) and the steps'
    losses in a (capacity,) buffer, zero past ``num_steps``; with aux, ``(losses, aux sums)``. Pure;
    vmap it over models with ``epoch``/``step`` unbatched.
    """
    step = _step_fn(spec, hparams, x, y, order, _epoch_keys(state.key, state.epoch)[1])
    aux0 = _aux_zeros(spec, hparams, state, x, y) if getattr(spec, "has_aux", False) else {}

    def body(j, carry):
        params, opt_state, losses, aux_sum = carry
        params, opt_state, value, aux = step(params, opt_state, state.step + j)
        aux_sum = jax.tree_util.tree_map(lambda s, a: s + a, aux_sum, aux)
        return params, opt_state, losses.at[j].set(value), aux_sum

    losses = jnp.zeros((capacity,), x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    params, opt_state, losses, aux_sum = jax.lax.fori_loop(
        0, num_steps, body, (state.params, state.opt_state, losses, aux0))
    done = state.step + num_steps
    finished = done >= steps_per_epoch(order.shape[0], spec.batch_size)
    new = TrainState(params, opt_state, state.key, state.epoch + finished.astype(jnp.int32),
                     jnp.where(finished, 0, done).astype(jnp.int32))
    return new, ((losses, aux_sum) if aux_sum else losses)


def fused_epoch(state: TrainState, x: jax.Array, y: jax.Array, hparams: Any, *,
                spec: Any) -> tuple[TrainState, jax.Array]:
    """A whole epoch as one ``lax.scan`` from step 0 (the pre-chunk engine; ``jaxmlp bench`` compares).

    Args:
        state: the run's state at an epoch boundary.
        x: (N, ...) training inputs.
        y: (N, ...) training targets.
        hparams: the traced numbers ``spec`` reads.
        spec: what a step computes (static).
    """
    n = x.shape[0]
    order = jax.random.permutation(_epoch_keys(state.key, state.epoch)[0], n).astype(jnp.int32)
    step = _step_fn(spec, hparams, x, y, order, _epoch_keys(state.key, state.epoch)[1])

    def body(carry, i):
        params, opt_state, value, _ = step(*carry, i)
        return (params, opt_state), value

    (params, opt_state), losses = jax.lax.scan(
        body, (state.params, state.opt_state), jnp.arange(steps_per_epoch(n, spec.batch_size)))
    return TrainState(params, opt_state, state.key, state.epoch + 1, state.step), losses


run_chunk = jax.jit(chunk, static_argnames=("spec", "capacity"))
run_fused_epoch = jax.jit(fused_epoch, static_argnames=("spec",))

_COMPILED: dict = {}


def _arg_signature(v) -> tuple:
    """(shape, dtype, placement), the same for an array on the default device and for an abstract
    ``jax.ShapeDtypeStruct``, so a program compiled from shapes alone is found again later."""
    sharding = getattr(v, "sharding", None)
    if sharding is None:
        sharding = ("single", jax.devices()[0])
    elif isinstance(sharding, jax.sharding.SingleDeviceSharding):
        sharding = ("single", next(iter(sharding.device_set)))
    return tuple(jnp.shape(v)), jnp.result_type(v), sharding


def compile_program(fn, static: dict, *args) -> tuple[Callable, float]:
    """The ahead-of-time compiled ``fn(*args, **static)`` and the seconds spent compiling (0.0 when this
    process compiled the same function, statics and argument shapes before: runs never recompile).

    Args:
        fn: a ``jax.jit``-wrapped function.
        static: its static keyword arguments.
        *args: arrays or ``jax.ShapeDtypeStruct`` s of its positional arguments.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    # The matmul precision changes the HLO but no argument: it must be part of the key (as in JAX's own).
    signature = (fn, tuple(sorted(static.items())), treedef, tuple(map(_arg_signature, leaves)),
                 jax.config.read("jax_enable_x64"), jax.config.jax_default_matmul_precision)  # type: ignore[attr-defined]
    if signature not in _COMPILED:
        t0 = time.perf_counter()
        _COMPILED[signature] = (fn.lower(*args, **static).compile(), time.perf_counter() - t0)
        return _COMPILED[signature]
    return _COMPILED[signature][0], 0.0


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
        partial: the current epoch's loss sum and seconds so far (a resumed run's).
        chunk_steps: a fixed chunk size (None: sized to take ``chunk_seconds``).
        chunk_seconds: target wall time of a chunk (None: ``backend.choices()``).

    Returns (final state, history, reason). A handler's ``StopRun`` ends the run at that boundary;
    errors propagate after the "end" event (reason "diverged" for ``DivergenceError``).
    """
    from .backend import choices

    loop = Loop(run, list(history), partial or {}, chunk_steps, chunk_seconds or choices().chunk_seconds,
                choices().min_chunk_steps)

    def emit(kind, new, old, losses=None, seconds=0.0, reason=""):
        event = Event(kind, run, new, old, np.zeros(0) if losses is None else losses, loop.history, seconds, reason,
                      loop.partial())
        for handler in handlers:
            handler(event)

    emit("start", state, state)
    order, reason, n, good = None, "done", run.x.shape[0], state
    try:
        while int(state.epoch) < run.epochs:
            if order is None:
                order = epoch_order(state.key, state.epoch, n)
            new, losses, seconds = loop.advance(state, order)
            good, state = state, new
            if int(state.step) == 0:  # the epoch ended: its record exists before any handler can stop
                order = None
                loop.close_epoch(state)
            emit("chunk", state, good, losses, seconds)
            if order is None:
                emit("epoch", state, state)
    except StopRun as stop:
        reason = stop.reason
    except DivergenceError:
        emit("end", good, good, reason="diverged")
        raise
    emit("end", state, state, reason=reason)
    return state, loop.history, reason


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


def build_run(spec, state: TrainState, x, y, epochs: int, hparams: Any = None, *, mesh: Any = None,
              **extra) -> tuple[Run, TrainState]:
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
        **extra: other ``Run`` fields (``loss_floor``, ``validate``, ``save``, ``config``).
    """
    hparams = {} if hparams is None else hparams
    n = x.shape[0]
    capacity = steps_per_epoch(n, spec.batch_size)
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


def _start(params, optimizer, key, resume) -> TrainState:
    """A fresh state, or the one to resume: a ``TrainState`` or a checkpoint path restored against the
    fresh state's shapes and dtypes."""
    if key is None:
        key = jax.random.PRNGKey(0)
    fresh = init_state(params, optimizer, key)
    if resume is None or isinstance(resume, TrainState):
        return fresh if resume is None else resume
    from .checkpoint import load_state

    return load_state(resume, jax.eval_shape(lambda s: s, fresh))


def train(loss_fn: Callable, params: Any, optimizer: Any, data: Any, *, epochs: int = 1, batch_size: int = 32,
          key: jax.Array | None = None, has_aux: bool = False, augment: Callable | None = None,
          handlers: Sequence[Callable] = (), progress: bool = False, checkpoint: str | None = None,
          resume: Any = None, divergence: bool = True, loss_floor: float = 0.0, mesh: Any = None,
          chunk_steps: int | None = None) -> TrainResult:
    """Train ``params`` to minimise ``loss_fn`` over minibatches of ``data`` in compiled chunks.

    Args:
        loss_fn: ``(params, x, y, key) -> scalar`` (or ``-> (scalar, aux)`` with ``has_aux``; aux a
            dict of scalars, averaged per epoch into the history); ``x`` (B, ...) and ``y`` (B, ...) are
            one minibatch, ``key`` that step's PRNG key (for dropout).
        params: any PyTree of arrays.
        optimizer: anything with ``init(params)`` and ``update(grads, state, params)`` (``jaxmlp.optim``,
            or optax).
        data: a pair of arrays ``(x, y)`` with the same number of rows N, or a ``Dataset`` (its
            training images, flattened and scaled to [0, 1], and labels).
        epochs: train until this many epochs are complete (a resumed run continues to it).
        batch_size: examples per step; the last batch of an epoch is short when it doesn't divide N.
        key: the run's PRNG key (shuffles and step keys; default ``PRNGKey(0)``).
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        augment: ``(key, x) -> x`` applied to each minibatch on the device, fresh every step.
        handlers: callables given each ``engine.Event`` between chunks (see ``jaxmlp.handlers``).
        progress: a progress bar and a line per epoch on stderr.
        checkpoint: a path saved after every epoch and where a signal stops the run.
        resume: a ``TrainState`` or a checkpoint path from an earlier ``train`` of the same setup.
        divergence: stop with ``DivergenceError`` when the loss passes 10x its start (and always on a
            non-finite loss or params).
        loss_floor: the least reference loss for that rule (e.g. ``log(num_classes)``).
        mesh: a ``jax.sharding.Mesh`` to split every minibatch over its devices.
        chunk_steps: steps per compiled chunk (default: sized to take about a quarter second).

    Returns a ``TrainResult``. SIGINT/SIGTERM stop at the next chunk boundary: the checkpoint (if any)
    holds that exact step and ``Interrupted`` is raised carrying the state.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    x, y = _as_arrays(data)
    spec = FunctionTask(loss_fn, optimizer, batch_size, has_aux, augment)
    state = _start(params, optimizer, key, resume)
    meta: dict = {}
    if isinstance(resume, str):
        from .checkpoint import read_meta
        meta = read_meta(resume)
    save = functools.partial(_save_plain, batch_size=batch_size)
    run, state = build_run(spec, state, x, y, epochs, mesh=mesh, loss_floor=loss_floor, save=save)
    chain = [*h.default_checks(divergence), *handlers, h.ProgressReport(quiet=not progress)]
    if checkpoint is not None:
        chain.append(h.Checkpointer(checkpoint))
    state, history, reason = advance(run, state, [*chain, h.SignalStop()], history=meta.get("history", ()),
                                     partial=meta.get("partial"), chunk_steps=chunk_steps)
    if reason.startswith("SIG"):
        raise Interrupted(int(signal.Signals[reason]), state, checkpoint)
    return TrainResult(state.params, state.opt_state, state, history, reason, run.compile_seconds)


def _save_plain(path, state: TrainState, history: list, partial: dict, *, batch_size: int) -> None:
    """A checkpoint of a ``train`` run: the state and enough meta to continue it."""
    from .checkpoint import save_checkpoint

    save_checkpoint(path, to_host(state), {"history": history, "partial": partial, "batch_size": batch_size})
