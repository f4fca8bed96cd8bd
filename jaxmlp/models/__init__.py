"""Models as values: each architecture is one small, immutable, hashable description.

A model has two pure functions, as a stax layer or an equinox module does::

    model = jaxmlp.MLP(hidden=(128, 64), activation="tanh")
    params = model.init(key, 784, 10)                    # a PyTree: list of {"W", "b"} layers
    logits = model.apply(params, x)                      # (N, 10); train=True, key=k adds dropout

and the hand-derived gradient where one exists (``MLP.manual_grad``). Every consumer (training,
evaluation, prediction, plots, sweeps, ensembles, transfer, the memory estimate, checkpoints) takes
the model value, so what was trained is what is scored. ``evaluate`` and ``predict_*`` take any
``apply``-like callable too.

The registry below is the one place an architecture's name is read: ``TrainConfig.arch`` and a
checkpoint's ``"model"`` record become a model here (``from_config``, ``from_dict``). A new
architecture is one module with its class and one entry in ``MODELS``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .cnn import CNN
from .mlp import MLP

__all__ = ["MLP", "CNN", "MODELS", "NAMES", "Model", "from_config", "from_dict", "to_dict", "finetune_mismatch",
           "as_apply"]

Model = MLP | CNN
MODELS: dict[str, Any] = {MLP.name: MLP, CNN.name: CNN}
NAMES = tuple(MODELS)


def model_class(name: str):
    """The class registered as ``name``.

    Args:
        name: an architecture's name, one of ``NAMES``.

    Returns:
        The model class; ValueError naming the known ones for another name.
    """
    if name not in MODELS:
        raise ValueError(f"arch: unknown architecture {name!r}; choose one of {', '.join(NAMES)}")
    return MODELS[name]


def from_config(config: Any) -> Model:
    """The model a config trains.

    Args:
        config: a ``TrainConfig`` (or any object with its ``arch``, ``hidden``, ``activation`` and
            ``dropout`` fields).

    Returns:
        The model value, e.g. ``MLP(hidden=(128, 64), activation='relu', dropout=0.0)``.
    """
    return model_class(config.arch).from_config(config)


def to_dict(model: Model) -> dict:
    """What checkpoints store of a model.

    Args:
        model: a model value.

    Returns:
        JSON-ready ``{"name": ..., field: value, ...}`` (tuples as lists); ``from_dict`` reads it back.
    """
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    return {"name": model.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def from_dict(record: dict) -> Model:
    """The model ``to_dict`` wrote.

    Args:
        record: ``{"name": ..., field: value, ...}``.

    Returns:
        The model value; ValueError naming what is wrong with ``record``.
    """
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise ValueError(f"model: expected an object with a 'name', got {record!r}")
    cls = model_class(record["name"])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - known - {"name"})
    if unknown:
        raise ValueError(f"model: unknown field {unknown[0]!r} for {record['name']}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k != "name"}
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"model: {err}") from None


def finetune_mismatch(saved: Model, wanted: Model) -> str | None:
    """Why the params of one model cannot start a run of another.

    Args:
        saved: the model that was trained.
        wanted: the model the new run trains.

    Returns:
        A reason (another architecture, other layer sizes), or None when they can (activation and
        dropout may change).
    """
    if type(saved) is not type(wanted):
        return f"holds a {saved.name} model, but the run's arch is {wanted.name}"
    if saved.layer_key() != wanted.layer_key():
        return saved.layer_mismatch(wanted)  # type: ignore[arg-type]  # same type, checked above
    return None


def as_apply(model: Any):
    """The forward function of a model.

    Args:
        model: a model value, or an ``apply(params, x) -> logits`` function.

    Returns:
        ``model.apply``, or ``model`` itself when it is such a function; TypeError otherwise.
    """
    apply = getattr(model, "apply", None)
    if callable(apply):
        return apply
    if callable(model):
        return model
    raise TypeError(f"model: expected a model (jaxmlp.MLP, jaxmlp.CNN, ...) or an apply function "
                    f"(params, x) -> logits, got {type(model).__name__}")
