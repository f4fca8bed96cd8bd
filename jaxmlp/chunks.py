"""The compiled side of the engine: a run's state, what one step computes, and the chunk program.

* ``TrainState``: the whole state of a run as one PyTree: params, optimizer state, the run's PRNG
  key, completed epochs and steps done in the current epoch. Epoch ``e``'s order of examples and
  every step's key are pure functions of (key, e, step), so any step can be addressed: a run stopped
  anywhere and resumed equals the uninterrupted run bit for bit.
* ``FunctionTask``: the spec of a user's loss and optimizer (``runs.TrainSpec`` is the built-in one).
* ``chunk``: the compiled unit, up to ``capacity`` steps of one epoch (a traced count, so any count
  up to the capacity runs the same executable). The short last batch of an epoch is a second branch
  of the same program. ``fused_epoch`` is a whole epoch as one ``lax.scan`` (``jaxmlp bench``).

``jaxmlp.engine`` re-exports every public name here; the host loop and ``train`` live there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._compat import enable_x64
from .backend import matmul_precision
from .optim import apply_updates

__all__ = ["TrainState", "FunctionTask", "init_state", "chunk", "fused_epoch", "epoch_order", "steps_per_epoch",
           "precision", "batch_slices", "run_chunk", "run_fused_epoch"]


@contextlib.contextmanager
def precision(dtype: str, matmul: str = "default"):
    """A context in which ``dtype`` arrays can exist and float32 matmuls run at ``matmul``. float64
    needs JAX's x64 mode, switched on for the block only, so nothing outside it changes. Both settings
    are per thread.

    Args:
        dtype: "float32", "bfloat16" or "float64".
        matmul: ``backend.matmul_precision``'s setting; "default" changes nothing.

    Yields:
        Nothing: the block runs with the settings.
    """
    with enable_x64(True) if dtype == "float64" else contextlib.nullcontext(), matmul_precision(matmul):
        yield


def batch_slices(num_examples: int, batch_size: int) -> list[slice]:
    """Minibatch slices of one epoch, the last one short when ``batch_size`` doesn't divide N."""
    return [slice(i, min(i + batch_size, num_examples)) for i in range(0, num_examples, batch_size)]


# ---------------------------------------------------------------- a user's step


class _ById:
    """A user's object as a static value: equal only to itself, hashed by identity (for unhashable ones,
    such as a ``@dataclass`` optimizer)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ById) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _static(value: Any) -> Any:
    """``value`` itself when it is hashable, else the identity wrapper ``_ById``."""
    try:
        hash(value)
    except TypeError:
        return _ById(value)
    return value


def _form(value: Any) -> str:
    return f"a tuple of {len(value)}" if isinstance(value, tuple) else f"a {type(value).__name__}"


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionTask:
    """What a step computes for a user's ``loss_fn`` and ``optimizer`` (static: hashable fields compare by
    value, unhashable ones, such as a ``@dataclass`` optimizer, by identity).

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

    def _key(self) -> tuple:
        return tuple(_static(getattr(self, f.name)) for f in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def by_value(self) -> bool:
        """Every field compares by value (none is an unhashable object compared by identity, which
        may have changed since a program was built from it)."""
        return not any(isinstance(k, _ById) for k in self._key())

    def value_and_grad(self, params, x, y, key, hparams):
        """The loss, its aux and its gradient on one minibatch.

        Args:
            params: the params.
            x: the minibatch's inputs.
            y: the minibatch's targets.
            key: the step's PRNG key, passed to ``loss_fn``.
            hparams: unused (a ``FunctionTask`` has no traced hyperparameters).

        Returns:
            ``((loss, aux dict), grads)``, as ``jax.value_and_grad(..., has_aux=True)`` gives them.
        """
        del hparams
        return jax.value_and_grad(self._checked_loss, has_aux=True)(params, x, y, key)

    def _checked_loss(self, params, x, y, key):
        """``(loss, aux dict)`` of ``loss_fn``, with a message that names the fix for an output of the wrong
        form (traced once, at compile time)."""
        out = self.loss_fn(params, x, y, key)
        if self.has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(f"loss_fn returned {_form(out)}; with has_aux=True it must return (loss, aux)")
            value, aux = out
        elif isinstance(out, tuple):
            raise ValueError(f"loss_fn returned a tuple of {len(out)}; pass has_aux=True (it must return "
                             f"(loss, aux)), or return the loss alone")
        else:
            value, aux = out, {}
        if jnp.shape(value) != ():
            raise ValueError(f"loss_fn returned a loss of shape {jnp.shape(value)}; it must be a scalar (take "
                             f"the mean over the batch)")
        return value, aux if isinstance(aux, dict) else {"aux": aux}

    def optimizer_for(self, hparams):
        """The optimizer a step applies.

        Args:
            hparams: unused (the user's optimizer carries its own numbers).

        Returns:
            ``optimizer``.
        """
        del hparams
        return self.optimizer

    def augment_batch(self, key, x):
        """One minibatch's inputs after ``augment_fn``.

        Args:
            key: the step's augmentation key.
            x: the minibatch's inputs.

        Returns:
            ``augment_fn(key, x)``, or ``x`` without one.
        """
        return x if self.augment_fn is None else self.augment_fn(key, x)


# ---------------------------------------------------------------- the state and its chunks


class TrainState(NamedTuple):
    """The whole state of a run: a PyTree that checkpoints, resumes and vmaps as one value.

    Attributes:
        params: the model's params, any PyTree of arrays.
        opt_state: the optimizer's state, ``optimizer.init(params)`` advanced.
        key: the run's PRNG key, (2,) uint32 or a typed key (``jax.random.key``): never advanced, epochs
            fold their index into it.
        epoch: int32 scalar, completed epochs.
        step: int32 scalar, steps done in the current epoch.
    """

    params: Any
    opt_state: Any
    key: jax.Array    # (2,) uint32 or typed, the run's key: never advanced, epochs fold their index into it
    epoch: jax.Array  # int32 (): completed epochs
    step: jax.Array   # int32 (): steps done in the current epoch


def init_state(params: Any, opt: Any, key: jax.Array) -> TrainState:
    """A fresh run: ``opt.init(params)``, epoch and step 0.

    Args:
        params: any PyTree of arrays.
        opt: the optimizer (``init``/``update``).
        key: the run's PRNG key (raw (2,) or typed).

    Returns:
        The ``TrainState``.
    """
    return TrainState(params, opt.init(params), key, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _epoch_keys(key: jax.Array, epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(shuffle key, base of the step keys) of one epoch: a pure function of the run's key."""
    perm_key, step_base = jax.random.split(jax.random.fold_in(key, epoch))
    return perm_key, step_base


@functools.partial(jax.jit, static_argnames=("num_examples",))
def epoch_order(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order in which an epoch visits the examples.

    Args:
        key: the run's PRNG key.
        epoch: the epoch's number (0 for the first), an int32 scalar.
        num_examples: N, static.

    Returns:
        (N,) int32: a permutation of the example indices, a pure function of ``key`` and ``epoch``.
    """
    return jax.random.permutation(_epoch_keys(key, epoch)[0], num_examples).astype(jnp.int32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Minibatches in one epoch, the last one short when needed.

    Args:
        num_examples: N.
        batch_size: examples per step.

    Returns:
        ``ceil(N / batch_size)``.
    """
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

    Returns:
        ``(new state, losses)``: the epoch counter moves on when its last step is done; the steps'
        losses are a (capacity,) buffer, zero past ``num_steps``, and with aux ``(losses, aux sums)``.
        Pure; vmap it over models with ``epoch``/``step`` unbatched.
    """
    step = _step_fn(spec, hparams, x, y, order, _epoch_keys(state.key, state.epoch)[1])
    aux0 = _aux_zeros(spec, hparams, state, x, y) if getattr(spec, "has_aux", False) else {}

    def body(j, carry):
        params, opt_state, losses, aux_sum = carry
        params, opt_state, value, aux = step(params, opt_state, state.step + j)
        aux_sum = jax.tree_util.tree_map(lambda s, a: s + a, aux_sum, aux)
        return params, opt_state, losses.at[j].set(value), aux_sum

    # At least float32 (bfloat16 inputs must not round the history's losses); float64 runs stay float64.
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    losses = jnp.zeros((capacity,), jnp.promote_types(x.dtype, jnp.float32) if floating else jnp.float32)
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

    Returns:
        ``(state after the epoch, the (steps,) losses of its steps)``.
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
