"""The built-in models' step: a ``TrainConfig``'s static part as the engine's step protocol.

``TrainSpec`` is what changes the compiled program (the model value, the gradient method, the
optimizer and schedule names, augmentation, frozen layers); ``engine.chunk`` runs it as it runs a
user's ``FunctionTask``. The numbers (lr, momentum, l2, ...) travel beside it as traced ``hparams``
(``config.hparams``): changing them never recompiles, and a sweep vmaps over them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import models, optim
from .config import TrainConfig
from .losses import cross_entropy, l2_penalty
from .model import inverted_dropout
from .models import MLP

__all__ = ["TrainSpec", "spec_for", "make_optimizer", "value_and_grad_fn"]


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The static part of training (changing it changes the compiled program).

    Args:
        batch_size: examples per step.
        model: the model value (``jaxmlp.MLP(...)``, ``jaxmlp.CNN()``): its ``apply`` and dropout.
        grad: "autodiff" (``jax.grad``) or "manual" (the model's hand-derived ``manual_grad``).
        optimizer: an optimizer name from ``optim.OPTIMIZERS``.
        schedule: a schedule name from ``optim.SCHEDULES``.
        total_steps: the schedule's horizon in steps (0 for "constant").
        warmup_steps: the schedule's warmup in steps.
        input_dropout: input-pixel drop rate (inverted dropout on each training minibatch, after augmentation).
        augment: None, "shift", "affine" or "elastic".
        image_side: the images' side in pixels, for augmentation.
        batch_sharding: None or the ``jax.sharding.Sharding`` each minibatch is constrained to (data
            parallelism, see ``parallel.py``).
        frozen: layer indices the optimizer leaves bit-identical.
        elastic_sigma: the elastic fields' smoothing in pixels (read only by "elastic").
        elastic_alpha: the elastic fields' scale in pixels (read only by "elastic").
        max_norm: None or the largest norm of a unit's incoming weights (``optim.max_norm``).
        compute_dtype: None, or "bfloat16" for mixed precision: the forward pass (its matmuls) runs on
            bfloat16 copies of the params and inputs; the params, the loss and the updates stay float32.
    """

    batch_size: int = 32
    model: Any = MLP()
    grad: str = "autodiff"
    optimizer: str = "sgd"
    schedule: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    input_dropout: float = 0.0
    augment: str | None = None
    image_side: int = 28
    batch_sharding: Any = None
    frozen: tuple = ()
    elastic_sigma: float = 4.0
    elastic_alpha: float = 34.0
    max_norm: float | None = None
    compute_dtype: str | None = None
    has_aux = False  # the built-in loss reports no aux

    def value_and_grad(self, params, x, y, key, hparams):
        """The loss and gradient of one minibatch: the engine's step protocol (see ``engine``).

        Args:
            params: the model's params.
            x: the minibatch's inputs.
            y: the minibatch's integer labels.
            key: the step's PRNG key (dropout).
            hparams: the traced hyperparameters (``config.hparams``).

        Returns:
            ``((loss, {}), grads)``.
        """
        value, grads = value_and_grad_fn(self)(params, x, y, key, hparams)
        return (value, {}), grads

    def optimizer_for(self, hparams: dict) -> optim.Optimizer:
        """The optimizer, its numbers taken from the traced ``hparams``.

        Args:
            hparams: the traced hyperparameters (``config.hparams``).

        Returns:
            ``make_optimizer(self, hparams)``.
        """
        return make_optimizer(self, hparams)

    def augment_batch(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """The minibatch, augmented when the spec asks for it.

        Args:
            key: the step's augmentation key.
            x: (B, D) inputs.

        Returns:
            (B, D) inputs, distorted and input-dropped as the spec says.
        """
        return _augment(self, key, x)


def spec_for(config: TrainConfig, num_examples: int, image_side: int = 28) -> TrainSpec:
    """The static part of a run.

    Args:
        config: the run's ``TrainConfig``.
        num_examples: the training set's size (it fixes a schedule's length).
        image_side: the images' side in pixels.

    Returns:
        The ``TrainSpec``.
    """
    steps_per_epoch = -(-num_examples // config.batch_size)
    scheduled = config.schedule != "constant"  # without a schedule, runs of any length share a program
    return TrainSpec(
        batch_size=config.batch_size, model=models.from_config(config), grad=config.grad,
        optimizer=config.optimizer, schedule=config.schedule,
        total_steps=steps_per_epoch * config.epochs if scheduled else 0,
        warmup_steps=steps_per_epoch * config.warmup_epochs if scheduled else 0,
        input_dropout=float(config.input_dropout),
        augment=None if config.augment == "none" else config.augment, image_side=image_side,
        frozen=tuple(config.freeze), compute_dtype="bfloat16" if config.dtype == "bfloat16" else None,
        **_elastic_and_max_norm(config))


def _elastic_and_max_norm(config: TrainConfig) -> dict:
    """The spec's elastic numbers (only an elastic run's differ from the defaults) and max-norm limit."""
    out = {"max_norm": None if config.max_norm is None else float(config.max_norm)}
    if config.augment == "elastic":
        out.update(elastic_sigma=float(config.elastic_sigma), elastic_alpha=float(config.elastic_alpha))
    return out


def make_optimizer(spec: TrainSpec, hparams: dict) -> optim.Optimizer:
    """The optimizer named by ``spec``, its lr (or lr schedule) and constants taken from ``hparams``.

    Args:
        spec: the run's ``TrainSpec``.
        hparams: the traced hyperparameters (``config.hparams``).

    Returns:
        The ``Optimizer``, with max-norm and frozen layers when the spec asks for them.
    """
    lr = hparams["lr"]
    if spec.schedule != "constant":
        lr = optim.schedule_by_name(spec.schedule, lr, total_steps=max(spec.total_steps, 2),
                                    warmup_steps=spec.warmup_steps or None)
    opt = optim.by_name(spec.optimizer, lr=lr, momentum=hparams["momentum"], beta1=hparams["beta1"],
                        beta2=hparams["beta2"], weight_decay=hparams["weight_decay"])
    if spec.max_norm is not None:  # last, so the step lands on the constrained weights (then frozen layers stay)
        opt = optim.chain(opt, optim.max_norm(spec.max_norm))
    if not spec.frozen:
        return opt
    from .transfer import trainable_mask

    # The mask needs the params' structure, known only when init/update see them.
    frozen = lambda params: optim.freeze(opt, trainable_mask(params, spec.frozen))  # noqa: E731
    return optim.Optimizer(lambda params: frozen(params).init(params),
                           lambda grads, state, params=None: frozen(params).update(grads, state, params))


def value_and_grad_fn(spec: TrainSpec) -> Callable:
    """The loss-and-gradient function of the spec's gradient method ("autodiff" or "manual").

    Args:
        spec: the run's ``TrainSpec``.

    Returns:
        ``(params, x, y, key, hparams) -> (loss, grads)``.
    """
    model = spec.model
    if spec.grad == "manual":
        def manual(params, x, y, key, hparams):
            value = cross_entropy(model.apply(params, x, key=key, train=True), y)
            return value, model.manual_grad(params, x, y, key=key, l2=hparams["l2"])

        return manual
    fwd = model.apply
    if spec.compute_dtype is not None:
        fwd = _mixed(fwd, jnp.dtype(spec.compute_dtype))

    def objective(params, x, y, key, hparams):
        value = cross_entropy(fwd(params, x, key=key, train=True), y)
        # L2 joins the objective (its gradient flows through jax.grad); decoupled decay is the optimizer's.
        return value + hparams["l2"] * l2_penalty(params), value

    def autodiff(params, x, y, key, hparams):
        (_, value), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y, key, hparams)
        return value, grads

    return autodiff


def _mixed(fwd: Callable, compute) -> Callable:
    """``fwd`` in mixed precision: params and inputs cast to ``compute`` for the forward pass, the logits
    back to the params' dtype, so the cross-entropy, the L2 term and (through the casts) the gradients
    are float32. No loss scaling: bfloat16 has float32's exponent range."""
    def apply(params, x, **kwargs):
        low = jax.tree_util.tree_map(lambda p: p.astype(compute), params)
        out_dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return fwd(low, x.astype(compute), **kwargs).astype(out_dtype)
    return apply


def _augment(spec: TrainSpec, key: jax.Array, x: jax.Array) -> jax.Array:
    """The training minibatch x (B, D): distorted (``spec.augment``), then its pixels dropped
    (``spec.input_dropout``)."""
    x = _distort(spec, key, x)
    if spec.input_dropout > 0:
        # A key of its own (folded in): the distortions drawn from ``key`` are the same with or without it.
        x = inverted_dropout(jax.random.fold_in(key, 1), x, spec.input_dropout)
    return x


def _distort(spec: TrainSpec, key: jax.Array, x: jax.Array) -> jax.Array:
    if spec.augment is None:
        return x
    from . import augment

    if spec.augment == "shift":
        return augment.random_shift(key, x, side=spec.image_side)
    if spec.augment == "affine":
        return augment.random_affine(key, x, side=spec.image_side)
    if spec.augment == "elastic":
        return augment.random_elastic(key, x, spec.elastic_sigma, spec.elastic_alpha, side=spec.image_side)
    raise ValueError(f"unknown augmentation {spec.augment!r}; choose shift, affine or elastic")
