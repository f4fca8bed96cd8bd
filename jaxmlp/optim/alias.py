"""The named optimizers, each a chain of transforms (optax's ``alias``):

    chain(coupled weight decay, direction, decoupled weight decay, scale_by_learning_rate(learning_rate))

with one state, the direction's (``SgdState``, ``MomentumState``, ``AdamState``): its ``step`` is the count
the learning rate's schedule reads, so a checkpoint stores one NamedTuple per optimizer.

Conventions (PyTorch's, documented per function):

- ``sgd``/``momentum``/``nesterov``/``adam``: ``weight_decay`` is coupled L2, ``g <- g + wd * p``
  before the rule, on every leaf (use :func:`jaxmlp.losses.l2_penalty` in the loss for W only).
- ``adamw``: decoupled decay (Loshchilov & Hutter), scaled by the learning rate as in PyTorch and optax.

A weight decay reads the params: ``update(grads, state)`` without them is a ValueError, unless the decay
is the Python number 0 (the default of all but ``adamw``), which adds nothing.
"""
from __future__ import annotations

import jax

from .base import (
    LR,
    EmptyState,
    GradientTransformation,
    Optimizer,
    SgdState,
    _as,
    _is_zero,
    _need_params,
    _stateless,
    chain,
    identity,
)
from .transforms import _count, _scale_by_momentum, add_decayed_weights, scale_by_adam, scale_by_learning_rate

__all__ = ["sgd", "momentum", "nesterov", "adam", "adamw"]


def _coupled_decay(weight_decay) -> GradientTransformation:
    """Coupled L2, ``g <- g + weight_decay * p`` in the params' dtype. A Python 0 adds nothing (so plain
    sgd stays the notebook's exact ``p - lr * g``) and needs no params; any other value, a traced one
    included (a vmapped sweep), reads them."""

    def fn(grads, params):
        if _is_zero(weight_decay):
            return grads if params is None else jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
        _need_params(params, "weight_decay")
        return jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype) + _as(weight_decay, p) * p, grads, params)

    return _stateless(fn)


def _descent(learning_rate: LR, direction: GradientTransformation, *, coupled=0.0,
             decoupled=None) -> Optimizer:
    """``chain(_coupled_decay(coupled), direction, add_decayed_weights(decoupled),
    scale_by_learning_rate(learning_rate))`` whose state is the direction's alone: the learning rate's
    step counter is the direction's ``step`` (both count the same updates)."""
    steps = chain(_coupled_decay(coupled), direction,
                  identity() if decoupled is None else add_decayed_weights(decoupled),
                  scale_by_learning_rate(learning_rate))

    def update(grads, state, params=None):
        updates, (_, state, _, _) = steps.update(grads, (EmptyState(), state, EmptyState(), SgdState(state.step)),
                                                 params)
        return updates, state

    return Optimizer(direction.init, update)


def sgd(learning_rate: LR, weight_decay=0.0) -> Optimizer:
    """Plain gradient descent, the notebook's rule: ``p <- p - lr * (g + wd * p)``.

    Args:
        learning_rate: a number, a traced scalar or a schedule ``step -> lr``.
        weight_decay: coupled L2 coefficient added to the gradient.

    Returns:
        The ``Optimizer``; its state is an ``SgdState``.
    """
    return _descent(learning_rate, _count(), coupled=weight_decay)


def momentum(learning_rate: LR, momentum=0.9, weight_decay=0.0) -> Optimizer:
    """Heavy-ball momentum, PyTorch convention (no dampening):
    ``g <- g + wd*p; v <- momentum*v + g; p <- p - lr*v``.

    Args:
        learning_rate: learning rate or schedule.
        momentum: the momentum coefficient (optax's name).
        weight_decay: coupled L2 coefficient.

    Returns:
        The ``Optimizer``; its state is a ``MomentumState``.
    """
    return _descent(learning_rate, _scale_by_momentum(momentum, nesterov=False), coupled=weight_decay)


def nesterov(learning_rate: LR, momentum=0.9, weight_decay=0.0) -> Optimizer:
    """Nesterov momentum, PyTorch convention:
    ``g <- g + wd*p; v <- momentum*v + g; p <- p - lr*(g + momentum*v)``.

    Args:
        learning_rate: learning rate or schedule.
        momentum: the momentum coefficient.
        weight_decay: coupled L2 coefficient.

    Returns:
        The ``Optimizer``; its state is a ``MomentumState``.
    """
    return _descent(learning_rate, _scale_by_momentum(momentum, nesterov=True), coupled=weight_decay)


def adam(learning_rate: LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0) -> Optimizer:
    """Adam (Kingma & Ba) with bias correction, eps outside the sqrt:
    ``m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)``, t = 1, 2, ...

    Args:
        learning_rate: learning rate or schedule.
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the root of the second moment.
        weight_decay: coupled L2 (added to g), as in PyTorch's Adam; prefer :func:`adamw`.

    Returns:
        The ``Optimizer``; its state is an ``AdamState``.
    """
    return _descent(learning_rate, scale_by_adam(b1, b2, eps), coupled=weight_decay)


def adamw(learning_rate: LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2) -> Optimizer:
    """AdamW: Adam plus decoupled weight decay (Loshchilov & Hutter),
    ``p <- p - lr * (adam_direction + weight_decay * p)`` with the *old* p; the decay never
    enters the moment estimates. Applies to every leaf (biases too), as PyTorch does; reads the params
    (as optax's, whatever ``weight_decay``).

    Args:
        learning_rate: learning rate or schedule.
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the root of the second moment.
        weight_decay: decoupled decay coefficient (scaled by the learning rate). PyTorch's default,
            0.01 (optax's is 1e-4).

    Returns:
        The ``Optimizer``; its state is an ``AdamState``.
    """
    return _descent(learning_rate, scale_by_adam(b1, b2, eps), decoupled=weight_decay)
