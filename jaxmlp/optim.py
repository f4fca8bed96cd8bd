"""Optimizers, gradient transformations and learning-rate schedules as pure functions (no optax).

The protocol is the JAX ecosystem's (optax's ``GradientTransformation``), so optimizers written here
and optax's own are interchangeable wherever one is expected::

    opt = chain(clip_by_global_norm(1.0), adam(1e-3))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

``state`` is a PyTree (NamedTuples of arrays with an int32 ``step`` counter), so it passes through
``jax.lax.scan``, ``jax.jit`` and ``jax.vmap`` unchanged. ``updates`` are what is *added* to the params
(``-lr * direction`` for a descent rule), so transforms compose: clip, mask, decay, accumulate.

``lr`` is a python number, a (possibly traced) jnp scalar, or a schedule ``step -> lr``; a schedule
is evaluated at the state's ``step`` *before* the update, so the first update uses ``lr(0)``. Nothing
branches in python on ``lr``, so the constructors can be called inside ``jit``/``vmap`` with a
batched ``lr``.

Conventions (PyTorch's, documented per function):

- ``sgd``/``momentum``/``nesterov``/``adam``: ``weight_decay`` is coupled L2, ``g <- g + wd * p``
  before the rule, on every leaf (use :func:`jaxmlp.losses.l2_penalty` in the loss for W only).
- ``adamw``: decoupled decay (Loshchilov & Hutter), scaled by ``lr`` as in PyTorch and optax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .losses import l2_penalty
from .schedules import (  # noqa: F401  (re-exported: optim.cosine etc.)
    SCHEDULES,
    Schedule,
    constant,
    cosine,
    schedule_by_name,
    step_decay,
    warmup_cosine,
)

PyTree = Any
LR = float | jax.Array | Schedule

__all__ = [
    "GradientTransformation", "Optimizer", "SgdState", "MomentumState", "AdamState", "EmptyState",
    "AccumulateState", "apply_updates", "chain", "identity",
    "sgd", "momentum", "nesterov", "adam", "adamw", "by_name", "OPTIMIZERS",
    "scale", "scale_by_learning_rate", "scale_by_adam", "add_decayed_weights", "clip_by_global_norm",
    "freeze", "masked", "accumulate", "max_norm", "global_norm",
    "constant", "step_decay", "cosine", "warmup_cosine", "schedule_by_name", "SCHEDULES",
    "l2_penalty",
]


class GradientTransformation(NamedTuple):
    """A pair of pure functions: ``init(params) -> state`` and
    ``update(grads, state, params=None) -> (updates, new_state)``; optax's protocol."""

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
        velocity: ``v <- beta * v + g``, a PyTree like params (same shapes and dtypes).
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


# ----------------------------------------------------------------------------- helpers

def _lr_at(lr: LR, step: jax.Array) -> jax.Array | float:
    # callable() is a python-type check, safe on tracers (arrays are not callable).
    return lr(step) if callable(lr) else lr


def _as(x, like: jax.Array) -> jax.Array:
    """Cast a scalar hyperparameter to ``like``'s dtype so float32 params never get
    promoted to float64 by an x64 ``lr`` (and scan carries keep their dtypes)."""
    return jnp.asarray(x).astype(like.dtype)


def _zero_step() -> jax.Array:
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


def _with_decay(grads: PyTree, params: PyTree, weight_decay) -> PyTree:
    """Coupled L2: g + wd * p. A python 0 skips the add so plain sgd stays the notebook's
    exact ``p - lr * g`` (a traced wd, e.g. in a vmapped sweep, always adds)."""
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
        return jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
    _need_params(params, "weight_decay")
    return jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype) + _as(weight_decay, p) * p,
                                  grads, params)


def _need_params(params, what: str) -> None:
    if params is None:
        raise ValueError(f"{what} needs the params: call update(grads, state, params)")


def _descend(direction: PyTree, lr_t) -> PyTree:
    """The updates ``-lr * direction``: adding them to p gives exactly the rule's ``p - lr * d``."""
    return jax.tree_util.tree_map(lambda d: -(_as(lr_t, d) * d), direction)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf, each result in its param's dtype."""
    return jax.tree_util.tree_map(lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates)


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves of ``tree`` together (a scalar)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


# -------------------------------------------------------------------------- optimizers

def sgd(lr: LR, weight_decay=0.0) -> Optimizer:
    """Plain gradient descent, the notebook's rule: ``p <- p - lr * (g + wd * p)``.

    Args:
        lr: learning rate, a number, a traced scalar or a schedule ``step -> lr``.
        weight_decay: coupled L2 coefficient added to the gradient.
    """

    def init(params):
        return SgdState(_zero_step())

    def update(grads, state, params=None):
        grads = _with_decay(grads, params, weight_decay) if params is not None else grads
        return _descend(grads, _lr_at(lr, state.step)), SgdState(state.step + 1)

    return Optimizer(init, update)


def _heavy_ball(lr: LR, beta, weight_decay, nesterov_: bool) -> Optimizer:
    def init(params):
        return MomentumState(_zero_step(), _zeros_like(params))

    def update(grads, state, params=None):
        lr_t = _lr_at(lr, state.step)
        grads = _with_decay(grads, params, weight_decay) if params is not None else grads
        velocity = jax.tree_util.tree_map(lambda v, g: _as(beta, v) * v + g.astype(v.dtype),
                                          state.velocity, grads)
        if nesterov_:
            # Look-ahead form (Sutskever et al., as in PyTorch): step along g + beta * v_new.
            direction = jax.tree_util.tree_map(lambda g, v: g + _as(beta, v) * v, grads, velocity)
        else:
            direction = velocity
        return _descend(direction, lr_t), MomentumState(state.step + 1, velocity)

    return Optimizer(init, update)


def momentum(lr: LR, beta=0.9, weight_decay=0.0) -> Optimizer:
    """Heavy-ball momentum, PyTorch convention (no dampening):
    ``g <- g + wd*p; v <- beta*v + g; p <- p - lr*v``.

    Args:
        lr: learning rate or schedule.
        beta: momentum coefficient.
        weight_decay: coupled L2 coefficient.
    """
    return _heavy_ball(lr, beta, weight_decay, nesterov_=False)


def nesterov(lr: LR, beta=0.9, weight_decay=0.0) -> Optimizer:
    """Nesterov momentum, PyTorch convention:
    ``g <- g + wd*p; v <- beta*v + g; p <- p - lr*(g + beta*v)``.

    Args:
        lr: learning rate or schedule.
        beta: momentum coefficient.
        weight_decay: coupled L2 coefficient.
    """
    return _heavy_ball(lr, beta, weight_decay, nesterov_=True)


def _adam_direction(grads, state: AdamState, b1, b2, eps):
    """(direction per leaf, new state) of Adam's rule, bias-corrected: m_hat / (sqrt(v_hat) + eps)."""
    t = state.step + 1
    mu = jax.tree_util.tree_map(lambda m, g: _as(b1, m) * m + (1 - _as(b1, m)) * g, state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: _as(b2, v) * v + (1 - _as(b2, v)) * g * g, state.nu, grads)

    def leaf(m, v):
        tt = t.astype(m.dtype)
        m_hat = m / (1 - _as(b1, m) ** tt)  # bias correction: EMAs start at zero
        v_hat = v / (1 - _as(b2, m) ** tt)
        return m_hat / (jnp.sqrt(v_hat) + _as(eps, m))

    return jax.tree_util.tree_map(leaf, mu, nu), AdamState(t, mu, nu)


def _adam_like(lr: LR, b1, b2, eps, l2, decoupled) -> Optimizer:
    def init(params):
        zeros = _zeros_like(params)
        return AdamState(_zero_step(), zeros, zeros)

    def update(grads, state, params=None):
        lr_t = _lr_at(lr, state.step)
        grads = _with_decay(grads, params, l2) if params is not None else grads
        direction, new_state = _adam_direction(grads, state, b1, b2, eps)
        if decoupled is not None:
            _need_params(params, "adamw")
            direction = jax.tree_util.tree_map(lambda d, p: d + _as(decoupled, p) * p, direction, params)
        return _descend(direction, lr_t), new_state

    return Optimizer(init, update)


def adam(lr: LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0) -> Optimizer:
    """Adam (Kingma & Ba) with bias correction, eps outside the sqrt:
    ``m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)``, t = 1, 2, ...

    Args:
        lr: learning rate or schedule.
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the root of the second moment.
        weight_decay: coupled L2 (added to g), as in PyTorch's Adam; prefer :func:`adamw`.
    """
    return _adam_like(lr, b1, b2, eps, weight_decay, decoupled=None)


def adamw(lr: LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2) -> Optimizer:
    """AdamW: Adam plus decoupled weight decay (Loshchilov & Hutter),
    ``p <- p - lr * (adam_direction + weight_decay * p)`` with the *old* p; the decay never
    enters the moment estimates. Applies to every leaf (biases too), as PyTorch does.

    Args:
        lr: learning rate or schedule.
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the root of the second moment.
        weight_decay: decoupled decay coefficient (scaled by lr).
    """
    return _adam_like(lr, b1, b2, eps, 0.0, decoupled=weight_decay)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
_HEAVY_BALL = {"momentum": momentum, "nesterov": nesterov}  # by_name's `momentum` kwarg shadows


def by_name(name: str, lr: LR, *, momentum=None, beta1=None, beta2=None, eps=None,
            weight_decay=None) -> Optimizer:
    """Build an optimizer from its name and the config's hyperparameters.

    Args:
        name: one of ``OPTIMIZERS``.
        lr: learning rate or schedule.
        momentum: beta of momentum/nesterov (None: 0.9).
        beta1: Adam's b1 (None: 0.9).
        beta2: Adam's b2 (None: 0.999).
        eps: Adam's eps (None: 1e-8).
        weight_decay: None means the optimizer's default.

    Hyperparameters the chosen optimizer does not use are ignored. ValueError for an unknown name.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")

    def pick(value, default):
        return default if value is None else value

    if key == "sgd":
        return sgd(lr, weight_decay=pick(weight_decay, 0.0))
    if key in ("momentum", "nesterov"):
        return _HEAVY_BALL[key](lr, beta=pick(momentum, 0.9), weight_decay=pick(weight_decay, 0.0))
    adam_hyper = dict(b1=pick(beta1, 0.9), b2=pick(beta2, 0.999), eps=pick(eps, 1e-8))
    if key == "adam":
        return adam(lr, weight_decay=pick(weight_decay, 0.0), **adam_hyper)
    return adamw(lr, weight_decay=pick(weight_decay, 1e-2), **adam_hyper)


# -------------------------------------------------------------------- composable transforms

def identity() -> GradientTransformation:
    """Updates pass through unchanged."""
    return GradientTransformation(lambda params: EmptyState(), lambda updates, state, params=None: (updates, state))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order, each to the previous one's updates; the state is their tuple.

    Args:
        *transforms: objects with ``init``/``update`` (this module's or optax's).
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
    return GradientTransformation(lambda params: EmptyState(),
                                  lambda updates, state, params=None: (fn(updates, params), state))


def scale(factor) -> GradientTransformation:
    """Multiply every update by ``factor`` (a number or traced scalar)."""
    return _stateless(lambda u, p: jax.tree_util.tree_map(lambda x: _as(factor, x) * x, u))


def scale_by_learning_rate(lr: LR) -> GradientTransformation:
    """Turn a direction into a descent step: ``updates <- -lr(step) * updates``; counts its own steps.

    Args:
        lr: learning rate, traced scalar or schedule ``step -> lr``.
    """

    def update(updates, state, params=None):
        return _descend(updates, _lr_at(lr, state.step)), SgdState(state.step + 1)

    return GradientTransformation(lambda params: SgdState(_zero_step()), update)


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8) -> GradientTransformation:
    """Adam's bias-corrected direction ``m_hat / (sqrt(v_hat) + eps)`` (no learning rate, no sign):
    chain it with :func:`scale_by_learning_rate`.

    Args:
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the root of the second moment.
    """

    def init(params):
        zeros = _zeros_like(params)
        return AdamState(_zero_step(), zeros, zeros)

    return GradientTransformation(init, lambda updates, state, params=None: _adam_direction(updates, state, b1, b2,
                                                                                            eps))


def add_decayed_weights(weight_decay, mask: PyTree | None = None) -> GradientTransformation:
    """``updates + weight_decay * params``: coupled L2 when placed before an optimizer's rule,
    decoupled decay when placed after a direction and before :func:`scale_by_learning_rate`.

    Args:
        weight_decay: the coefficient.
        mask: optional PyTree of bools like params: decay only where True (e.g. weights, not biases).
    """

    def fn(updates, params):
        _need_params(params, "add_decayed_weights")
        decayed = jax.tree_util.tree_map(lambda u, p: u + _as(weight_decay, p) * p, updates, params)
        return decayed if mask is None else _select(mask, decayed, updates)

    return _stateless(fn)


def clip_by_global_norm(max_norm_value) -> GradientTransformation:
    """Scale all updates together so their global L2 norm is at most ``max_norm_value``.

    Args:
        max_norm_value: the largest allowed global norm (positive).
    """

    def fn(updates, params):
        norm = global_norm(updates)
        leaves = jax.tree_util.tree_leaves(updates)
        limit = jnp.asarray(max_norm_value, leaves[0].dtype) if leaves else max_norm_value
        factor = jnp.where(norm > limit, limit / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny), 1.0)
        return jax.tree_util.tree_map(lambda u: (u * factor).astype(u.dtype), updates)

    return _stateless(fn)


def max_norm(limit, axis: int = 0) -> GradientTransformation:
    """Max-norm constraint (Srivastava et al. 2014): after the step, every column of each 2-D ``W``
    (the incoming weights of one unit, summed over ``axis``) has L2 norm at most ``limit``; the
    updates are changed so that ``params + updates`` lands on the constrained weights. Place it last
    in a chain. Biases and other leaves are left alone.

    Args:
        limit: the largest allowed norm of a unit's incoming weights.
        axis: the axis summed over (0: fan_in for this library's (fan_in, fan_out) ``W``).
    """

    def fn(updates, params):
        _need_params(params, "max_norm")

        def leaf(path, u, p):
            if getattr(path[-1], "key", None) != "W" or jnp.ndim(p) != 2:
                return u
            new = p + u
            norms = jnp.sqrt(jnp.sum(jnp.square(new), axis=axis, keepdims=True))
            lim = _as(limit, new)
            clipped = new * jnp.where(norms > lim, lim / jnp.maximum(norms, jnp.finfo(new.dtype).tiny), 1.0)
            return (clipped - p).astype(u.dtype)

        return jax.tree_util.tree_map_with_path(leaf, updates, params)

    return _stateless(fn)


def _select(mask: PyTree, new: PyTree, old: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda m, n, o: jnp.where(m, n, o), mask, new, old)


def _select_state(mask: PyTree, mask_def, new: PyTree, old: PyTree) -> PyTree:
    """Keep the old value of every state subtree shaped like params (velocity, mu, nu) where
    mask is False; other state (step counters) advances as usual."""
    if jax.tree_util.tree_structure(new) == mask_def and mask_def.num_leaves > 0 \
            and not jax.tree_util.treedef_is_leaf(mask_def):
        return _select(mask, new, old)
    if isinstance(new, tuple) and hasattr(new, "_fields"):
        return type(new)(*(_select_state(mask, mask_def, n, o) for n, o in zip(new, old)))
    if isinstance(new, (tuple, list)):
        return type(new)(_select_state(mask, mask_def, n, o) for n, o in zip(new, old))
    if isinstance(new, dict):
        return {k: _select_state(mask, mask_def, new[k], old[k]) for k in new}
    return new


def _mask_checker(mask: PyTree) -> Callable[[PyTree], None]:
    mask_def = jax.tree_util.tree_structure(mask)

    def check(tree):
        if tree is not None and jax.tree_util.tree_structure(tree) != mask_def:
            raise ValueError("mask: its structure does not match the params "
                             f"({mask_def} vs {jax.tree_util.tree_structure(tree)})")
    return check


def freeze(optimizer: GradientTransformation, mask: PyTree) -> GradientTransformation:
    """Wrap ``optimizer`` so leaves whose ``mask`` leaf is False stay bit-identical.

    Args:
        optimizer: the optimizer of the trainable leaves.
        mask: params' structure with bool leaves (e.g. :func:`jaxmlp.transfer.trainable_mask`).

    Frozen leaves get zero grads (so moment EMAs see nothing) and zero updates (so not even weight
    decay touches them); their params-shaped state is kept as it was.
    """
    check, mask_def = _mask_checker(mask), jax.tree_util.tree_structure(mask)

    def init(params):
        check(params)
        return optimizer.init(params)

    def update(grads, state, params=None):
        check(params)
        grads = jax.tree_util.tree_map(lambda m, g: jnp.where(m, g, jnp.zeros_like(g)), mask, grads)
        updates, new_state = optimizer.update(grads, state, params)
        updates = jax.tree_util.tree_map(lambda m, u: jnp.where(m, u, jnp.zeros_like(u)), mask, updates)
        return updates, _select_state(mask, mask_def, new_state, state)

    return GradientTransformation(init, update)


def masked(transform: GradientTransformation, mask: PyTree) -> GradientTransformation:
    """Apply ``transform`` where ``mask`` is True; elsewhere the updates pass through unchanged
    (optax's ``masked``; use :func:`freeze` to stop leaves instead).

    Args:
        transform: the transformation to apply to the selected leaves.
        mask: params' structure with bool leaves.
    """
    check, mask_def = _mask_checker(mask), jax.tree_util.tree_structure(mask)

    def update(updates, state, params=None):
        check(params)
        new, new_state = transform.update(updates, state, params)
        return _select(mask, new, updates), _select_state(mask, mask_def, new_state, state)

    return GradientTransformation(transform.init, update)


def accumulate(optimizer: GradientTransformation, every: int) -> GradientTransformation:
    """Gradient accumulation: sum the gradients of ``every`` calls and let ``optimizer`` take one
    step with their mean on the last of them; the other calls return zero updates.

    Args:
        optimizer: the wrapped optimizer.
        every: micro-steps per real step (a positive int): the effective batch is ``every`` x the batch.
    """
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"accumulate: every must be a positive integer, got {every!r}")

    def init(params):
        return AccumulateState(_zero_step(), _zeros_like(params), optimizer.init(params))

    def update(grads, state, params=None):
        summed = jax.tree_util.tree_map(lambda a, g: a + g.astype(a.dtype), state.grads, grads)

        def step(_):
            mean = jax.tree_util.tree_map(lambda s: s / every, summed)
            updates, inner = optimizer.update(mean, state.inner, params)
            return updates, AccumulateState(_zero_step(), jax.tree_util.tree_map(jnp.zeros_like, summed), inner)

        def wait(_):
            return (jax.tree_util.tree_map(jnp.zeros_like, summed),
                    AccumulateState(state.micro_steps + 1, summed, state.inner))

        return jax.lax.cond(state.micro_steps + 1 >= every, step, wait, None)

    return GradientTransformation(init, update)
