"""Composable gradient transformations, optax's where the name is optax's: each is a
``GradientTransformation`` to ``chain`` with others (``scale``, ``scale_by_learning_rate``,
``scale_by_adam``, ``add_decayed_weights``, ``clip_by_global_norm``, ``masked``) or a wrapper around a
whole optimizer (``freeze``, ``accumulate``), and ``max_norm``, the constraint of Srivastava et al.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .base import (
    LR,
    AccumulateState,
    AdamState,
    GradientTransformation,
    MomentumState,
    PyTree,
    SgdState,
    _as,
    _descend,
    _lr_at,
    _need_params,
    _stateless,
    _zero_step,
    _zeros_like,
)

__all__ = [
    "scale", "scale_by_learning_rate", "scale_by_adam", "add_decayed_weights", "clip_by_global_norm",
    "freeze", "masked", "accumulate", "max_norm", "global_norm",
]


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves of ``tree`` together.

    Args:
        tree: any PyTree of arrays (gradients, updates, params).

    Returns:
        A scalar.
    """
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------- directions and scales

def scale(step_size) -> GradientTransformation:
    """Multiply every update by ``step_size``.

    Args:
        step_size: a number or a traced scalar.

    Returns:
        A stateless ``GradientTransformation``.
    """
    return _stateless(lambda u, p: jax.tree_util.tree_map(lambda x: _as(step_size, x) * x, u))


def scale_by_learning_rate(learning_rate: LR) -> GradientTransformation:
    """Turn a direction into a descent step: ``updates <- -learning_rate(step) * updates``; counts its own
    steps.

    Args:
        learning_rate: a number, a traced scalar or a schedule ``step -> lr``.

    Returns:
        A ``GradientTransformation`` whose state is an ``SgdState``.
    """

    def update(updates, state, params=None):
        return _descend(updates, _lr_at(learning_rate, state.step)), SgdState(state.step + 1)

    return GradientTransformation(lambda params: SgdState(_zero_step()), update)


def _count() -> GradientTransformation:
    """Updates pass through; the state counts them (``SgdState``): plain gradient descent's direction."""
    return GradientTransformation(lambda params: SgdState(_zero_step()),
                                  lambda updates, state, params=None: (updates, SgdState(state.step + 1)))


def _scale_by_momentum(momentum, nesterov: bool) -> GradientTransformation:
    """Heavy-ball direction ``v <- momentum * v + g`` (Nesterov: ``g + momentum * v``), PyTorch's
    convention (no dampening); the state (``MomentumState``) also counts the updates."""

    def update(grads, state, params=None):
        velocity = jax.tree_util.tree_map(lambda v, g: _as(momentum, v) * v + g.astype(v.dtype),
                                          state.velocity, grads)
        if nesterov:
            # Look-ahead form (Sutskever et al., as in PyTorch): step along g + momentum * v_new.
            direction = jax.tree_util.tree_map(lambda g, v: g + _as(momentum, v) * v, grads, velocity)
        else:
            direction = velocity
        return direction, MomentumState(state.step + 1, velocity)

    return GradientTransformation(lambda params: MomentumState(_zero_step(), _zeros_like(params)), update)


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


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8) -> GradientTransformation:
    """Adam's bias-corrected direction ``m_hat / (sqrt(v_hat) + eps)`` (no learning rate, no sign):
    chain it with :func:`scale_by_learning_rate`.

    Args:
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the root of the second moment.

    Returns:
        A ``GradientTransformation`` whose state is an ``AdamState``.
    """

    def init(params):
        zeros = _zeros_like(params)
        return AdamState(_zero_step(), zeros, zeros)

    return GradientTransformation(init, lambda updates, state, params=None: _adam_direction(updates, state, b1, b2,
                                                                                            eps))


# ----------------------------------------------------------------------------- params-reading transforms

def add_decayed_weights(weight_decay, mask: PyTree | None = None) -> GradientTransformation:
    """``updates + weight_decay * params``: coupled L2 when placed before an optimizer's rule,
    decoupled decay when placed after a direction and before :func:`scale_by_learning_rate`. Reads the
    params: ``update`` without them is a ValueError (as optax's).

    Args:
        weight_decay: the coefficient.
        mask: optional PyTree of bools like params: decay only where True (e.g. weights, not biases).

    Returns:
        A stateless ``GradientTransformation``.
    """

    def fn(updates, params):
        _need_params(params, "weight_decay")
        decayed = jax.tree_util.tree_map(lambda u, p: u + _as(weight_decay, p) * p, updates, params)
        return decayed if mask is None else _select(mask, decayed, updates)

    return _stateless(fn)


def clip_by_global_norm(max_norm) -> GradientTransformation:
    """Scale all updates together so their global L2 norm is at most ``max_norm``.

    Args:
        max_norm: the largest allowed global norm (positive).

    Returns:
        A stateless ``GradientTransformation``.
    """

    def fn(updates, params):
        norm = global_norm(updates)
        leaves = jax.tree_util.tree_leaves(updates)
        limit = jnp.asarray(max_norm, leaves[0].dtype) if leaves else max_norm
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

    Returns:
        A stateless ``GradientTransformation`` that reads the params.
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


# ----------------------------------------------------------------------------- masks and wrappers

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

    Returns:
        The wrapped ``GradientTransformation``, with ``optimizer``'s state. Frozen leaves get zero
        grads (so moment EMAs see nothing) and zero updates (so not even weight decay touches them);
        their params-shaped state is kept as it was.
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


class _Masked(NamedTuple):
    """Stands where ``masked`` leaves a leaf out of its inner transform's view: a PyTree node with no
    leaves (optax's ``MaskedNode``), so the inner transform sees the masked leaves only."""


def masked(inner: GradientTransformation, mask: PyTree) -> GradientTransformation:
    """Run ``inner`` on the leaves where ``mask`` is True only, as optax's ``masked``: it sees (and its
    state holds) those leaves alone, so ``masked(clip_by_global_norm(c), mask)`` clips by the norm of the
    masked leaves; the other leaves' updates are the incoming ones, unchanged. Use :func:`freeze` to stop
    leaves instead.

    Args:
        inner: the transformation to apply to the selected leaves.
        mask: params' structure with Python bool leaves (which leaves are masked is fixed when the
            transform is built).

    Returns:
        The wrapped ``GradientTransformation``; its state is ``inner``'s, of the masked leaves.
    """
    check = _mask_checker(mask)

    def subtree(tree):
        return None if tree is None else jax.tree_util.tree_map(lambda m, x: x if m else _Masked(), mask, tree)

    def init(params):
        check(params)
        return inner.init(subtree(params))

    def update(updates, state, params=None):
        check(params)
        new, state = inner.update(subtree(updates), state, subtree(params))
        return jax.tree_util.tree_map(lambda m, n, u: n if m else u, mask, new, updates), state

    return GradientTransformation(init, update)


def accumulate(optimizer: GradientTransformation, every: int) -> GradientTransformation:
    """Gradient accumulation: sum the gradients of ``every`` calls and let ``optimizer`` take one
    step with their mean on the last of them; the other calls return zero updates.

    Args:
        optimizer: the wrapped optimizer.
        every: micro-steps per real step (a positive int): the effective batch is ``every`` x the batch.

    Returns:
        The wrapped ``GradientTransformation``; its state is an ``AccumulateState``.
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
