"""Optimizers, gradient transformations and learning-rate schedules as pure functions (no optax).

The protocol is the JAX ecosystem's (optax's ``GradientTransformation``), so optimizers written here
and optax's own are interchangeable wherever one is expected::

    opt = chain(clip_by_global_norm(1.0), adam(1e-3))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

``state`` is a PyTree (NamedTuples of arrays with an int32 ``step`` counter), so it passes through
``jax.lax.scan``, ``jax.jit`` and ``jax.vmap`` unchanged. ``updates`` are what is *added* to the params
(``-learning_rate * direction`` for a descent rule), so transforms compose: clip, mask, decay, accumulate.

``learning_rate`` is a python number, a (possibly traced) jnp scalar, or a schedule ``step -> lr``; a
schedule is evaluated at the state's ``step`` *before* the update, so the first update uses ``lr(0)``.
Nothing branches in python on the learning rate, so the constructors can be called inside
``jit``/``vmap`` with a batched one. Where a name is optax's (``masked``, ``add_decayed_weights``,
``b1``, ``momentum``...), so is its meaning.

The layers, each importing only those above it: ``schedules`` (functions of the step), ``base`` (the
protocol, the states, ``chain``, ``apply_updates``), ``transforms`` (the composable pieces), ``alias``
(the named optimizers as chains of them), ``registry`` (the optimizers selectable by name and the
``TrainConfig`` hyperparameters each reads). Every public name is importable from ``jaxmlp.optim``.
"""

from __future__ import annotations

from ..losses import l2_penalty
from .alias import adam, adamw, momentum, nesterov, sgd
from .base import (
    AccumulateState,
    AdamState,
    EmptyState,
    GradientTransformation,
    MomentumState,
    Optimizer,
    SgdState,
    apply_updates,
    chain,
    identity,
)
from .registry import OPTIMIZERS, by_name
from .schedules import (
    SCHEDULES,
    Schedule as Schedule,  # the type of a schedule, for annotations (not in __all__)
    constant,
    cosine,
    schedule_by_name,
    step_decay,
    warmup_cosine,
)
from .transforms import (
    accumulate,
    add_decayed_weights,
    clip_by_global_norm,
    freeze,
    global_norm,
    masked,
    max_norm,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
)

__all__ = [
    "GradientTransformation", "Optimizer", "SgdState", "MomentumState", "AdamState", "EmptyState",
    "AccumulateState", "apply_updates", "chain", "identity",
    "sgd", "momentum", "nesterov", "adam", "adamw", "by_name", "OPTIMIZERS",
    "scale", "scale_by_learning_rate", "scale_by_adam", "add_decayed_weights", "clip_by_global_norm",
    "freeze", "masked", "accumulate", "max_norm", "global_norm",
    "constant", "step_decay", "cosine", "warmup_cosine", "schedule_by_name", "SCHEDULES",
    "l2_penalty",
]
