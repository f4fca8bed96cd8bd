"""Optimizers and learning-rate schedules as pure functions (no optax).

One protocol, many small implementations::

    opt = adam(1e-3)
    state = opt.init(params)
    params, state = opt.update(grads, state, params)

``state`` is a PyTree of NamedTuples of arrays with an int32 ``step`` counter, so it can
be carried through ``jax.lax.scan``, ``jax.jit`` and ``jax.vmap`` unchanged. ``update``
returns the new params directly (not an update to add), which keeps a training step a
single line and lets :func:`freeze` select old or new values leaf by leaf.

``lr`` is a python number, a (possibly traced) jnp scalar, or a schedule
``step -> lr``; the schedule is evaluated at the state's ``step`` *before* the update,
so the first update uses ``lr(0)``. The code never branches in python on ``lr`` so the
constructors can be called inside ``jit``/``vmap`` with a batched ``lr``.

Conventions (PyTorch-style, documented per function):
- ``sgd``/``momentum``/``nesterov``/``adam``: ``weight_decay`` is coupled L2, i.e.
  ``g <- g + weight_decay * p`` before the rule (the gradient of ``wd * l2_penalty``
  summed over every leaf, biases included; use :func:`l2_penalty` in the loss for W only).
- ``adamw``: decoupled decay (Loshchilov & Hutter), scaled by ``lr`` as in PyTorch/optax.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Schedule = Callable[[jax.Array], jax.Array]
LR = float | jax.Array | Schedule

__all__ = [
    "Optimizer", "SgdState", "MomentumState", "AdamState",
    "sgd", "momentum", "nesterov", "adam", "adamw", "by_name", "OPTIMIZERS",
    "constant", "step_decay", "cosine", "warmup_cosine", "schedule_by_name", "SCHEDULES",
    "l2_penalty", "freeze",
]


class Optimizer(NamedTuple):
    """A pair of pure functions: ``init(params) -> state`` and
    ``update(grads, state, params) -> (new_params, new_state)``."""

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree]]


class SgdState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied so far


class MomentumState(NamedTuple):
    step: jax.Array
    velocity: PyTree  # same structure/dtypes as params


class AdamState(NamedTuple):
    step: jax.Array
    mu: PyTree  # first-moment EMA, like params
    nu: PyTree  # second-moment EMA, like params


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
    noticeable part of a cold start on CPU); under jit/vmap tracing the usual ``jnp.zeros_like``."""
    def zeros(leaf):
        if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "sharding"):
            return jnp.zeros_like(leaf)
        return jax.device_put(np.zeros(leaf.shape, leaf.dtype), leaf.sharding)
    return jax.tree_util.tree_map(zeros, tree)


def _with_decay(grads: PyTree, params: PyTree, weight_decay) -> PyTree:
    """Coupled L2: g + wd * p. A python 0 skips the add so plain sgd stays the notebook's
    exact ``p - lr * g`` (a traced wd, e.g. in a vmapped sweep, always adds)."""
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
        return jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
    return jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype) + _as(weight_decay, p) * p,
                                  grads, params)


# -------------------------------------------------------------------------- optimizers

def sgd(lr: LR, weight_decay=0.0) -> Optimizer:
    """Plain gradient descent, the notebook's rule: ``p <- p - lr * (g + wd * p)``."""

    def init(params):
        return SgdState(_zero_step())

    def update(grads, state, params):
        lr_t = _lr_at(lr, state.step)
        grads = _with_decay(grads, params, weight_decay)
        new_params = jax.tree_util.tree_map(lambda p, g: p - _as(lr_t, p) * g, params, grads)
        return new_params, SgdState(state.step + 1)

    return Optimizer(init, update)


def _heavy_ball(lr: LR, beta, weight_decay, nesterov_: bool) -> Optimizer:
    def init(params):
        return MomentumState(_zero_step(), _zeros_like(params))

    def update(grads, state, params):
        lr_t = _lr_at(lr, state.step)
        grads = _with_decay(grads, params, weight_decay)
        velocity = jax.tree_util.tree_map(lambda v, g: _as(beta, v) * v + g.astype(v.dtype),
                                          state.velocity, grads)
        if nesterov_:
            # Look-ahead form (Sutskever et al., as in PyTorch): step along g + beta * v_new.
            direction = jax.tree_util.tree_map(lambda g, v: g + _as(beta, v) * v, grads, velocity)
        else:
            direction = velocity
        new_params = jax.tree_util.tree_map(lambda p, d: p - _as(lr_t, p) * d, params, direction)
        return new_params, MomentumState(state.step + 1, velocity)

    return Optimizer(init, update)


def momentum(lr: LR, beta=0.9, weight_decay=0.0) -> Optimizer:
    """Heavy-ball momentum, PyTorch convention (no dampening):
    ``g <- g + wd*p; v <- beta*v + g; p <- p - lr*v``."""
    return _heavy_ball(lr, beta, weight_decay, nesterov_=False)


def nesterov(lr: LR, beta=0.9, weight_decay=0.0) -> Optimizer:
    """Nesterov momentum, PyTorch convention:
    ``g <- g + wd*p; v <- beta*v + g; p <- p - lr*(g + beta*v)``."""
    return _heavy_ball(lr, beta, weight_decay, nesterov_=True)


def _adam_like(lr: LR, b1, b2, eps, l2, decoupled) -> Optimizer:
    def init(params):
        zeros = _zeros_like(params)
        return AdamState(_zero_step(), zeros, zeros)

    def update(grads, state, params):
        lr_t = _lr_at(lr, state.step)
        t = state.step + 1
        grads = _with_decay(grads, params, l2)
        mu = jax.tree_util.tree_map(lambda m, g: _as(b1, m) * m + (1 - _as(b1, m)) * g,
                                    state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: _as(b2, v) * v + (1 - _as(b2, v)) * g * g,
                                    state.nu, grads)

        def step_leaf(p, m, v):
            tt = t.astype(p.dtype)
            m_hat = m / (1 - _as(b1, p) ** tt)  # bias correction: EMAs start at zero
            v_hat = v / (1 - _as(b2, p) ** tt)
            delta = m_hat / (jnp.sqrt(v_hat) + _as(eps, p))
            if decoupled is not None:
                delta = delta + _as(decoupled, p) * p
            return p - _as(lr_t, p) * delta

        new_params = jax.tree_util.tree_map(step_leaf, params, mu, nu)
        return new_params, AdamState(t, mu, nu)

    return Optimizer(init, update)


def adam(lr: LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0) -> Optimizer:
    """Adam (Kingma & Ba) with bias correction, eps outside the sqrt:
    ``m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)``, t = 1, 2, ...
    ``weight_decay`` is coupled L2 (added to g), as in PyTorch's Adam; prefer :func:`adamw`."""
    return _adam_like(lr, b1, b2, eps, weight_decay, decoupled=None)


def adamw(lr: LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2) -> Optimizer:
    """AdamW: Adam plus decoupled weight decay (Loshchilov & Hutter),
    ``p <- p - lr * (adam_direction + weight_decay * p)`` with the *old* p; the decay never
    enters the moment estimates. Applies to every leaf (biases too), as PyTorch does."""
    return _adam_like(lr, b1, b2, eps, 0.0, decoupled=weight_decay)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
_HEAVY_BALL = {"momentum": momentum, "nesterov": nesterov}  # by_name's `momentum` kwarg shadows


def by_name(name: str, lr: LR, *, momentum=None, beta1=None, beta2=None, eps=None,
            weight_decay=None) -> Optimizer:
    """Build an optimizer from CLI-style names (``--optimizer --momentum --beta1 --beta2
    --weight-decay``). ``None`` means the optimizer's default; hyperparameters the chosen
    optimizer does not use are ignored so the CLI can pass all flags unconditionally.
    Raises ValueError for an unknown name."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"--optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")

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


# --------------------------------------------------------------------------- schedules
# Pure functions of the (possibly traced) integer step. Step counts and decay factors are
# python numbers fixed by the config; lr may be traced.

def _check_positive_int(value, what: str) -> None:
    if isinstance(value, (int, float)) and not (value > 0 and float(value).is_integer()):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def constant(lr) -> Schedule:
    """``lr`` at every step (an array shaped like ``step``, default float dtype)."""
    return lambda step: jnp.zeros(jnp.shape(step), jnp.result_type(float)) + lr


def step_decay(lr, decay_rate, decay_steps: int) -> Schedule:
    """Staircase decay: ``lr * decay_rate ** floor(step / decay_steps)``."""
    _check_positive_int(decay_steps, "decay_steps")

    def schedule(step):
        k = (jnp.asarray(step) // decay_steps).astype(jnp.result_type(float))
        return lr * decay_rate ** k

    return schedule


def cosine(lr, total_steps: int, final_lr=0.0) -> Schedule:
    """Cosine annealing from ``lr`` at step 0 to ``final_lr`` at ``total_steps`` (held after):
    ``final + (lr - final) * (1 + cos(pi * min(step/total, 1))) / 2``."""
    _check_positive_int(total_steps, "total_steps")

    def schedule(step):
        frac = jnp.clip(jnp.asarray(step).astype(jnp.result_type(float)) / total_steps, 0.0, 1.0)
        return final_lr + (lr - final_lr) * 0.5 * (1.0 + jnp.cos(math.pi * frac))

    return schedule


def warmup_cosine(lr, warmup_steps: int, total_steps: int, final_lr=0.0) -> Schedule:
    """Linear warmup ``lr * (step+1) / warmup_steps`` for steps ``0..warmup_steps-1`` (so no
    update is wasted at lr 0 and step ``warmup_steps-1`` uses the peak), then cosine from
    ``lr`` at ``warmup_steps`` to ``final_lr`` at ``total_steps``. ``warmup_steps=0`` is plain
    :func:`cosine`."""
    _check_positive_int(total_steps, "total_steps")
    if isinstance(warmup_steps, (int, float)) and isinstance(total_steps, (int, float)):
        if warmup_steps < 0 or warmup_steps >= total_steps or not float(warmup_steps).is_integer():
            raise ValueError(f"warmup_steps must be an integer in [0, total_steps={total_steps}), "
                             f"got {warmup_steps!r}")
    decay = cosine(lr, total_steps - warmup_steps, final_lr)

    def schedule(step):
        step = jnp.asarray(step)
        warm = lr * (step + 1).astype(jnp.result_type(float)) / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, decay(step - warmup_steps))

    return schedule


SCHEDULES = ("constant", "step", "cosine", "warmup-cosine")


def schedule_by_name(name: str, lr, total_steps: int, *, decay_rate=0.1, decay_steps=None,
                     warmup_steps=None, final_lr=0.0) -> Schedule:
    """Build a schedule from a CLI name (``--schedule {constant,step,cosine,warmup-cosine}``).
    Defaults: ``decay_steps = total_steps // 3``; ``warmup_steps = total_steps // 20``
    (at least 1 when total_steps > 1). Raises ValueError for an unknown name."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in SCHEDULES:
        raise ValueError(f"--schedule: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if key == "constant":
        return constant(lr)
    _check_positive_int(total_steps, "total_steps")
    if key == "step":
        return step_decay(lr, decay_rate, max(1, total_steps // 3) if decay_steps is None else decay_steps)
    if key == "cosine":
        return cosine(lr, total_steps, final_lr)
    if warmup_steps is None:
        warmup_steps = min(max(1, total_steps // 20), total_steps - 1)
    return warmup_cosine(lr, warmup_steps, total_steps, final_lr)


# ------------------------------------------------------------------- regularization/freeze

def l2_penalty(params: PyTree) -> jax.Array:
    """``0.5 * sum ||W||^2`` over layers (conv kernels included), scalar in W's dtype.

    Biases are left out on purpose: they only shift activations and do not grow the
    function's sensitivity to its input, and pulling them to zero can bias outputs for
    no gain (the usual convention since Krogh & Hertz)."""
    weights = [layer["W"] for layer in params]
    if not weights:
        raise ValueError("l2_penalty: params has no layers")
    return 0.5 * functools.reduce(operator.add, (jnp.sum(jnp.square(w)) for w in weights))


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


def freeze(optimizer: Optimizer, mask: PyTree) -> Optimizer:
    """Wrap ``optimizer`` so leaves whose ``mask`` leaf is False stay bit-identical.

    ``mask`` has params' structure with bool leaves (python bools or bool arrays, e.g. from
    :func:`jaxmlp.transfer.trainable_mask`). Frozen leaves get zero grads (so moment EMAs
    see nothing) and are then *selected* back from the old params with ``jnp.where``, so
    not even weight decay touches them; their params-shaped state is selected back too."""
    mask_def = jax.tree_util.tree_structure(mask)

    def check(params):
        if jax.tree_util.tree_structure(params) != mask_def:
            raise ValueError("freeze: mask structure does not match params "
                             f"({mask_def} vs {jax.tree_util.tree_structure(params)})")

    def init(params):
        check(params)
        return optimizer.init(params)

    def update(grads, state, params):
        check(params)
        grads = jax.tree_util.tree_map(lambda m, g: jnp.where(m, g, jnp.zeros_like(g)), mask, grads)
        new_params, new_state = optimizer.update(grads, state, params)
        return _select(mask, new_params, params), _select_state(mask, mask_def, new_state, state)

    return Optimizer(init, update)
