"""The optimizers selectable by name (``--optimizer``, ``TrainConfig.optimizer``): one table, ``REGISTRY``.

Each entry is the constructor and the ``TrainConfig`` hyperparameters it reads, mapped to the
constructor's own keywords (``beta1`` -> ``b1``). Everything that depends on which optimizer reads what
is derived from it: ``OPTIMIZERS`` (the config's choices), ``by_name``, the settings a config refuses as
unused (``config.unused_settings``), the default weight decay (``TrainConfig.resolved_weight_decay``);
the memory estimate reads the state's size from the constructor's ``init`` itself.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .alias import adam, adamw, momentum, nesterov, sgd
from .base import LR, Optimizer

__all__ = ["OptimizerEntry", "REGISTRY", "OPTIMIZERS", "by_name", "readers"]


class OptimizerEntry(NamedTuple):
    """One named optimizer.

    Attributes:
        make: its constructor, ``make(learning_rate, **keywords) -> Optimizer``.
        reads: each ``TrainConfig`` hyperparameter it reads -> the constructor's keyword for it.
    """

    make: Callable[..., Optimizer]
    reads: Mapping[str, str]

    @property
    def default_weight_decay(self) -> float:
        """The constructor's own default ``weight_decay`` (0.01 for adamw, 0 for the others)."""
        return float(inspect.signature(self.make).parameters["weight_decay"].default)


_DESCENT = {"lr": "learning_rate", "weight_decay": "weight_decay"}
_HEAVY_BALL = {**_DESCENT, "momentum": "momentum"}
_ADAM = {**_DESCENT, "beta1": "b1", "beta2": "b2", "eps": "eps"}

REGISTRY: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(sgd, _DESCENT),
    "momentum": OptimizerEntry(momentum, _HEAVY_BALL),
    "nesterov": OptimizerEntry(nesterov, _HEAVY_BALL),
    "adam": OptimizerEntry(adam, _ADAM),
    "adamw": OptimizerEntry(adamw, _ADAM),
}
OPTIMIZERS = tuple(REGISTRY)


def readers(hparam: str) -> tuple[str, ...]:
    """The optimizers that read a ``TrainConfig`` hyperparameter.

    Args:
        hparam: the field's name, such as "momentum".

    Returns:
        The names of the optimizers that read it, in table order.
    """
    return tuple(name for name, entry in REGISTRY.items() if hparam in entry.reads)


def by_name(name: str, lr: LR, *, momentum=None, beta1=None, beta2=None, eps=None,
            weight_decay=None) -> Optimizer:
    """Build an optimizer from its name and the config's hyperparameters (``TrainConfig``'s names).

    Args:
        name: one of ``OPTIMIZERS`` (case and surrounding spaces ignored).
        lr: learning rate or schedule.
        momentum: the momentum of momentum/nesterov (None: 0.9).
        beta1: Adam's b1 (None: 0.9).
        beta2: Adam's b2 (None: 0.999).
        eps: Adam's eps (None: 1e-8).
        weight_decay: None means the optimizer's default.

    Hyperparameters the chosen optimizer does not read are ignored; None is the constructor's default.

    Returns:
        The ``Optimizer``. ValueError for an unknown name.
    """
    entry = REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    given = {"lr": lr, "momentum": momentum, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    return entry.make(**{entry.reads[k]: v for k, v in given.items() if k in entry.reads and v is not None})
