"""The protocol: a ``GradientTransformation`` is a pair of pure functions (optax's), its states are PyTrees
of NamedTuples, ``chain`` composes transforms and ``apply_updates`` adds their updates to the params.

Also the few helpers every transform shares: reading a learning rate or schedule at a step, casting a
hyperparameter to a leaf's dtype, zeros placed like the params, and the "this transform needs the params"
error.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .schedules import Schedule

PyTree = Any
LR = float | jax.Array | Schedule

__all__ = [
    "GradientTransformation", "Optimizer", "EmptyState", "SgdState", "MomentumState", "AdamState",
    "AccumulateState", "apply_updates", "chain", "identity",
]


class GradientTransformation(NamedTuple):
    """A pair of pure functions, optax's protocol.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(grads, state, params=None) -> (updates, new_state)``.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[..., tuple[PyTree, PyTree]]


Optimizer = GradientTransformation  # the name the rest of jaxmlp uses for a whole optimizer


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


class SgdState(NamedTuple):
    """The state of :func:`sgd` and :func:`scale_by_learning_rate`.

    Attributes:
        step: int32 scalar, the number of updates applied so far.
    """

    step: jax.Array  # int32 scalar: number of updates applied so far


class MomentumState(NamedTuple):
    """The state of :func:`momentum` and :func:`nesterov`.

    Attributes:
        step: int32 scalar, the number of updates applied so far.
        velocity: ``v <- momentum * v + g``, a PyTree like params (same shapes and dtypes).
    """

    step: jax.Array
    velocity: PyTree  # same structure/dtypes as params


class AdamState(NamedTuple):
    """The state of :func:`adam`, :func:`adamw` and :func:`scale_by_adam`.

    Attributes:
        step: int32 scalar, the number of updates applied so far.
        mu: first-moment EMA of the gradients, a PyTree like params.
        nu: second-moment EMA of the squared gradients, a PyTree like params.
    """

    step: jax.Array
    mu: PyTree  # first-moment EMA, like params
    nu: PyTree  # second-moment EMA, like params


class AccumulateState(NamedTuple):
    """The state of :func:`accumulate`.

    Attributes:
        micro_steps: int32 scalar, micro-steps since the last real update.
        grads: their summed gradients, a PyTree like params.
        inner: the wrapped optimizer's state.
    """

    micro_steps: jax.Array  # int32: micro-steps since the last real update
    grads: PyTree     # their summed gradients, like params
    inner: PyTree     # the wrapped optimizer's state


# ----------------------------------------------------------------------------- shared helpers

def _lr_at(learning_rate: LR, step: jax.Array) -> jax.Array | float:
    """The learning rate of the update that follows ``step`` updates: a schedule evaluated at ``step``."""
    # callable() is a python-type check, safe on tracers (arrays are not callable).
    return learning_rate(step) if callable(learning_rate) else learning_rate


def _as(x, like: jax.Array) -> jax.Array:
    """A scalar hyperparameter in ``like``'s dtype, so float32 params never get promoted to float64 by an
    x64 learning rate (and scan carries keep their dtypes)."""
    return jnp.asarray(x).astype(like.dtype)


def _is_zero(x) -> bool:
    """Whether ``x`` is the Python number 0: a coefficient known, when the transform is built, to do
    nothing (a traced or array coefficient is never known to be 0)."""
    return isinstance(x, (int, float)) and x == 0


def _zero_step() -> jax.Array:
    """The int32 step counter of a fresh state."""
    return jnp.asarray(np.zeros([], np.int32))


def _zeros_like(tree: PyTree) -> PyTree:
    """Zeros shaped like ``tree``'s leaves. Concrete arrays get host zeros copied to where the leaf
    lives, which compiles nothing (``jnp.zeros_like`` compiles one small program per leaf shape, a
    noticeable part of a cold start on CPU); under jit/vmap tracing the usual ``jnp.zeros_like``.
    A leaf with no placement yet (a NumPy array, a fresh ``init_params`` result) gets its zeros on the
    default device uncommitted, like the leaf itself, so a jitted step sees one placement for both
    and compiles once."""
    def zeros(leaf):
        if isinstance(leaf, jax.core.Tracer):
            return jnp.zeros_like(leaf)
        if not hasattr(leaf, "sharding") or not getattr(leaf, "committed", True):
            return jnp.asarray(np.zeros(np.shape(leaf), jnp.result_type(leaf)))
        return jax.device_put(np.zeros(leaf.shape, leaf.dtype), leaf.sharding)
    return jax.tree_util.tree_map(zeros, tree)


def _need_params(params, what: str) -> None:
    """ValueError when a transform that reads the params was called without them."""
    if params is None:
        raise ValueError(f"{what} needs the params; pass params: update(grads, state, params)")


def _descend(direction: PyTree, lr_t) -> PyTree:
    """The updates ``-lr * direction``: adding them to p gives exactly the rule's ``p - lr * d``."""
    return jax.tree_util.tree_map(lambda d: -(_as(lr_t, d) * d), direction)


# ----------------------------------------------------------------------------- the protocol's tools

def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf, each result in its param's dtype.

    Args:
        params: any PyTree of arrays.
        updates: a PyTree of the same structure (an optimizer's ``update`` output).

    Returns:
        The new params.
    """
    return jax.tree_util.tree_map(lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates)


def identity() -> GradientTransformation:
    """Updates pass through unchanged.

    Returns:
        A stateless ``GradientTransformation`` (its state is an ``EmptyState``).
    """
    return GradientTransformation(lambda params: EmptyState(), lambda updates, state, params=None: (updates, state))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order, each to the previous one's updates; the state is their tuple.

    Args:
        *transforms: objects with ``init``/``update`` (this module's or optax's).

    Returns:
        The composed ``GradientTransformation``.
    """

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        new = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params)
            new.append(s)
        return updates, tuple(new)

    return GradientTransformation(init, update)


def _stateless(fn: Callable[[PyTree, PyTree], PyTree]) -> GradientTransformation:
    """The transform ``updates -> fn(updates, params)``, with optax's ``EmptyState``."""
    return GradientTransformation(lambda params: EmptyState(),
                                  lambda updates, state, params=None: (fn(updates, params), state))
