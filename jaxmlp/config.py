"""One training configuration, declared once.

Each ``TrainConfig`` field carries its help text, its kind of value (``check``), its choices and its
role in its metadata; everything else is derived from that one declaration: the CLI flags
(``add_flags``), the validation (``TrainConfig.validate``), the traced hyperparameters
(``hparams``), the static program description (``train.spec_for``), the metrics and checkpoint JSON
(``to_dict`` / ``from_dict``). Adding a hyperparameter means adding one field here.

A config is checked when it is built (``__post_init__``, so ``dataclasses.replace`` checks too) and frozen: a
refused value is a ``ConfigError`` (a ValueError) naming the field in Python terms
(``TrainConfig.optimizer: unknown value 'adma'; ...``); the command line words the same error with
its flags (``ConfigError.flags``: ``--optimizer: ...``). A setting the run would not use (``momentum``
with plain SGD, ``hidden`` with the CNN, ``warmup_epochs`` without the warmup schedule) is refused
rather than recorded as if it mattered (``unused_settings``).

Roles: ``hparam`` fields are numbers that travel into the compiled program as traced 0-d arrays
(changing them never recompiles; a sweep vmaps over them); every other field is static or a record.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from . import models, optim
from .backend import MATMUL_PRECISIONS
from .model import ACTIVATIONS, DEFAULT_INIT, INIT_SCHEMES

ARCHS = models.NAMES
DTYPES = ("float32", "float64", "bfloat16")
AUGMENTS = ("none", "shift", "affine", "elastic")
GRADS = ("autodiff", "manual")
DATASET_NAMES = ("mnist", "fashion-mnist", "kmnist")


# ---------------------------------------------------------------- errors


class ConfigError(ValueError):
    """A refused setting. ``str(err)`` names fields as ``TrainConfig.name``; ``flags()`` words the same
    message with the command line's flags (``--name``)."""

    def flags(self) -> str:
        """The message in the command line's words.

        Returns:
            The message with every ``TrainConfig.field_name`` written as its flag ``--field-name``.
        """
        return re.sub(r"TrainConfig\.(\w+)", lambda m: _flag(m[1]), str(self))

    def fields(self) -> str:
        """The message in a checkpoint's words (its saved settings are keyed by field).

        Returns:
            The message with every ``TrainConfig.field_name`` written as the bare ``field_name``.
        """
        return re.sub(r"TrainConfig\.(\w+)", lambda m: m[1], str(self))


# ---------------------------------------------------------------- kinds of values


def _number(parse: Callable, accept: Callable, what: str) -> Callable:
    """A parser/validator: ``parse`` the value, then require ``accept(value)``; errors say ``what``."""
    def convert(value):
        try:
            ok = not isinstance(value, bool) and value is not None
            number = parse(value) if ok else None
            if isinstance(value, float) and parse is int and not float(value).is_integer():
                number = None
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or not accept(number):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number

    convert.__name__ = what  # argparse names the type in some messages
    convert.__doc__ = (f"``value`` as {what}.\n\n"
                       "Args:\n    value: a number or its text (a bool or None is refused).\n\n"
                       f"Returns:\n    The {parse.__name__}; ``argparse.ArgumentTypeError`` otherwise.")
    return convert


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive finite number")
nonneg_float = _number(float, lambda v: 0 <= v < math.inf, "a non-negative finite number")
unit_float = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
# jax.random.PRNGKey keeps a seed's low 32 bits: 2**32 + 1 would silently be seed 1.
seed_int = _number(int, lambda v: 0 <= v < 2 ** 32, "a seed, an integer in [0, 2**32)")


def _text(value) -> str:
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected text, got {value!r}")
    return value


def hidden_sizes(values) -> tuple:
    """Layer sizes from the ways a user writes them.

    Args:
        values: ``[256, 128]``, ``["256", "128"]``, ``["256,128"]``, "256,128" or one int.

    Returns:
        The sizes as a tuple of positive ints, ``(256, 128)``; ``argparse.ArgumentTypeError`` otherwise.
    """
    if isinstance(values, (str, int)):
        values = [values]
    tokens = [t for v in values for t in str(v).split(",") if t.strip()]
    if not tokens:
        raise argparse.ArgumentTypeError("expected positive layer sizes such as 128 64, got nothing")
    return tuple(positive_int(t) for t in tokens)


def _field(default, help: str, check: Callable | None = None, *, choices=None, hparam: bool = False,
           nargs=None, flag: bool = True):
    meta = {"help": help, "check": check, "choices": choices, "hparam": hparam, "nargs": nargs, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------- the configuration


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is. Defaults: the notebook's architecture and its best experiment
    (784-128-64-10, SGD lr 0.1, batch 32, 10 epochs, seed 42) with He init (``model.DEFAULT_INIT``)."""

    dataset: str = _field("mnist", "dataset name", _text, choices=DATASET_NAMES)
    arch: str = _field("mlp", "architecture", _text, choices=ARCHS)
    hidden: tuple = _field((128, 64), "hidden layer sizes of the MLP, e.g. --hidden 256 128", hidden_sizes,
                           nargs="+")
    init: str = _field(DEFAULT_INIT, "weight init: he = N(0, 2/fan_in), suited to ReLU; notebook = the seed's "
                                    "N(0,1)*0.01; glorot", _text,
                       choices=INIT_SCHEMES)
    activation: str = _field("relu", "hidden-layer activation of the MLP", _text, choices=ACTIVATIONS)
    dtype: str = _field("float32", "float dtype of params and inputs; bfloat16: mixed precision (bfloat16 "
                        "matmuls, float32 params, loss and updates)", _text, choices=DTYPES)
    matmul_precision: str = _field(
        "default", "float32 matmuls and convolutions: default = the backend's (full float32 on CPUs, TF32 on "
                   "recent NVIDIA GPUs), highest = full float32 everywhere (see jaxmlp.backend)", _text,
        choices=MATMUL_PRECISIONS)
    epochs: int = _field(10, "passes over the training data", positive_int)
    batch_size: int = _field(32, "minibatch size", positive_int)
    lr: float = _field(0.1, "learning rate (the peak of a schedule)", positive_float, hparam=True)
    seed: int = _field(42, "PRNG seed (init, shuffles, dropout, augmentation, validation split)", seed_int)
    optimizer: str = _field("sgd", "optimizer", _text, choices=optim.OPTIMIZERS)
    momentum: float = _field(0.9, "momentum coefficient (momentum, nesterov)", unit_float, hparam=True)
    beta1: float = _field(0.9, "Adam's beta1", unit_float, hparam=True)
    beta2: float = _field(0.999, "Adam's beta2", unit_float, hparam=True)
    weight_decay: float | None = _field(
        None, "weight decay: decoupled for adamw, added to the gradient otherwise (default: the optimizer's "
              "own, 0.01 for adamw and 0 for the others)", nonneg_float, hparam=True)
    l2: float = _field(0.0, "L2 penalty 0.5*l2*sum(W^2) added to the loss", nonneg_float, hparam=True)
    schedule: str = _field("constant", "learning-rate schedule over the run", _text, choices=optim.SCHEDULES)
    warmup_epochs: int = _field(0, "warmup length in epochs (warmup-cosine)", nonneg_int)
    dropout: float = _field(0.0, "dropout rate on hidden units", unit_float)
    input_dropout: float = _field(0.0, "dropout rate on the input pixels, fresh every training step (Srivastava "
                                       "et al. 2014 used 0.2)", unit_float)
    augment: str = _field("none", "on-device data augmentation, fresh every step", _text, choices=AUGMENTS)
    elastic_sigma: float = _field(4.0, "--augment elastic: the smoothing Gaussian's standard deviation in pixels "
                                       "(Simard et al. 2003)", positive_float)
    elastic_alpha: float = _field(34.0, "--augment elastic: the displacement scale in pixels", nonneg_float)
    max_norm: float | None = _field(None, "max-norm constraint: after every step, each unit's incoming weights "
                                          "(a column of a dense W) have L2 norm at most this (Srivastava et al. "
                                          "2014)", positive_float)
    val_split: float = _field(0.0, "fraction of the training data held out for validation", unit_float)
    patience: int = _field(0, "early stopping: stop after this many epochs without a better validation "
                              "accuracy and keep the best params (needs --val-split; 0: off)", nonneg_int)
    grad: str = _field("autodiff", "gradients from jax.grad or the notebook's hand-derived backprop (MLP)", _text,
                       choices=GRADS)
    finetune: str | None = _field(None, "start from the params of this checkpoint (its --arch and --hidden are "
                                        "taken unless given)", _text)
    freeze: tuple = _field((), "layer indices the optimizer leaves untouched (0: the first layer, -1: the head)",
                           int, nargs="+")
    new_head: bool = _field(False, "with --finetune: a fresh output layer sized to the labels", bool)
    classes: tuple | None = _field(None, "train and test on these labels only, relabelled 0..k-1 in this order",
                                   nonneg_int, nargs="+")
    preset: str | None = _field(None, "the recipe these values started from (a record)", _text, flag=False)

    # ------------------------------------------------------------ derived views

    def to_dict(self) -> dict:
        """The config as JSON-ready values.

        Returns:
            ``{field: value}`` for every field, tuples as lists; ``from_dict`` reads it back.
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> TrainConfig:
        """A validated config from JSON-like values.

        Args:
            values: ``{field: value}``, as ``to_dict`` writes it; missing fields take their defaults.
            where: what the values came from (a file, a checkpoint), named in the error.

        Returns:
            The ``TrainConfig``. ValueError naming ``where`` and the field for an unknown setting or a
            bad value.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected an object of settings, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown setting {unknown[0]!r}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ValueError(f"{where}: {err.fields()}") from None
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"{where}: {err}") from None

    @property
    def resolved_weight_decay(self) -> float:
        """``weight_decay``, or the optimizer's own default (from ``optim.registry``: one place)."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return optim.registry.REGISTRY[self.optimizer].default_weight_decay

    def __post_init__(self) -> None:
        # The one place values are normalised (lists to tuples, "3" to 3): while the config is built,
        # before anyone can see it. Afterwards it is frozen; ``dataclasses.replace`` builds a checked copy.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))
        if self.classes is not None:
            object.__setattr__(self, "classes", _checked_classes(self.classes))
        _cross_checks(self)
        unused = {k: why for k, why in unused_settings(self).items() if getattr(self, k) != _default(k)}
        if unused:
            name, why = next(iter(unused.items()))
            raise ConfigError(f"TrainConfig.{name} would be ignored: {why}")

    def validate(self) -> TrainConfig:
        """The config, checked: a ``TrainConfig`` is checked when it is built (``ConfigError`` naming the
        field) and frozen after.

        Returns:
            The config itself, unchanged.
        """
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


# The settings only some optimizers read (momentum; beta1, beta2), each with its readers: from optim's registry.
OPTIMIZER_CONSTANTS = {name: users for name, users in ((f.name, optim.registry.readers(f.name))
                                                       for f in dataclasses.fields(TrainConfig))
                       if 0 < len(users) < len(optim.OPTIMIZERS)}


def unused_settings(config: TrainConfig | dict) -> dict[str, str]:
    """The settings that ``config`` (a config or a dict of field values; missing ones default) would not
    use, each with the reason, in Python terms. A config refuses such a field set to anything but its
    default; the command line refuses it given at all.

    Args:
        config: a ``TrainConfig`` or a dict of its field values.

    Returns:
        ``{field: reason}`` for every setting the config would not use.
    """
    get = (lambda n: config.get(n, _default(n))) if isinstance(config, dict) else (  # noqa: E731
        lambda n: getattr(config, n))
    out = {}
    for name, users in OPTIMIZER_CONSTANTS.items():
        if get("optimizer") not in users:
            out[name] = f"only {' and '.join(users)} use it; TrainConfig.optimizer is {get('optimizer')}"
    if get("schedule") != "warmup-cosine":
        out["warmup_epochs"] = f"only the warmup-cosine schedule warms up; TrainConfig.schedule is {get('schedule')}"
    model = models.model_class(get("arch"))
    if model.fixed:
        why = f"{model.fixed}; TrainConfig.arch is {get('arch')}"
        out.update({"hidden": why, "activation": why})
        if get("init") not in model.init_schemes:  # the model's own init: asking for it is what happens
            out["init"] = why
    if get("augment") != "elastic":
        why = f"only the elastic augmentation reads it; TrainConfig.augment is {get('augment')}"
        out.update({"elastic_sigma": why, "elastic_alpha": why})
    if get("finetune") and not get("new_head"):
        out["init"] = "the params come from TrainConfig.finetune; only a new head (TrainConfig.new_head) is drawn"
    if get("dtype") in ("float64", "bfloat16"):
        out["matmul_precision"] = f"it sets the precision of float32 matmuls; TrainConfig.dtype is {get('dtype')}"
    return out


def _checked(f: dataclasses.Field, value):
    """One field's value normalised (tuples for lists) and checked against its metadata."""
    meta = f.metadata
    if value is None and f.default is None:
        return None
    try:
        if meta["nargs"]:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise argparse.ArgumentTypeError(f"expected a list, got {value!r}")
            value = meta["check"](value) if meta["check"] is hidden_sizes else tuple(meta["check"](v) for v in value)
        elif meta["check"] is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
            value = bool(value)
        elif meta["check"] is not None:
            value = meta["check"](value)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"TrainConfig.{f.name}: {err}") from None
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"TrainConfig.{f.name}: unknown value {value!r}; choose one of {', '.join(meta['choices'])}")
    return value


def _checked_classes(classes) -> tuple:
    from .data import check_classes

    try:
        return tuple(check_classes(classes, what="TrainConfig.classes"))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _cross_checks(c: TrainConfig) -> None:
    if c.new_head and not c.finetune:
        raise ConfigError("TrainConfig.new_head replaces the head of a trained model; it needs TrainConfig.finetune "
                          "(a checkpoint)")
    if c.schedule == "warmup-cosine" and c.warmup_epochs >= c.epochs:
        raise ConfigError(f"TrainConfig.warmup_epochs ({c.warmup_epochs}) must be less than TrainConfig.epochs "
                          f"({c.epochs})")
    if c.patience and not c.val_split:
        raise ConfigError("TrainConfig.patience (early stopping) needs a validation split (TrainConfig.val_split)")
    if c.grad == "manual" and c.dtype == "bfloat16":
        raise ConfigError("TrainConfig.grad manual computes in the params' dtype; TrainConfig.dtype bfloat16 (mixed "
                          "precision) needs autodiff")
    if c.grad == "manual" and not hasattr(models.model_class(c.arch), "manual_grad"):
        raise ConfigError(f"TrainConfig.grad manual is the MLP's hand-derived backprop; TrainConfig.arch {c.arch} "
                          f"needs autodiff")


def hparam_names() -> tuple[str, ...]:
    """The traced numbers of a run.

    Returns:
        The names of the ``hparam`` fields of ``TrainConfig``, in field order.
    """
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["hparam"])


def hparams(config: TrainConfig | None = None, dtype=jnp.float32, **overrides) -> dict:
    """The traced numeric hyperparameters of ``config``.

    Args:
        config: a ``TrainConfig``; None: the defaults.
        dtype: the arrays' dtype.
        **overrides: values that replace the config's, by name (``hparam_names``); None leaves one.

    Returns:
        ``{name: 0-d array of dtype}``, ``weight_decay`` resolved to the optimizer's default when unset.
    """
    config = config or TrainConfig()
    unknown = set(overrides) - set(hparam_names())
    if unknown:
        raise ValueError(f"unknown hyperparameters: {sorted(unknown)}")
    values = {n: getattr(config, n) for n in hparam_names()}
    values["weight_decay"] = config.resolved_weight_decay
    values.update({k: v for k, v in overrides.items() if v is not None})
    # Through NumPy: a host value copied to the device compiles nothing (a cast on the device would).
    return {k: jnp.asarray(np.asarray(v, jnp.dtype(dtype))) for k, v in values.items()}


def add_flags(parser, names=None, *, defaults_from: TrainConfig | None = None) -> None:
    """Declare ``--name`` flags for the config fields ``names`` (all flag fields when None).

    The flags default to None so that the caller can tell "given" from "not given" (presets, resume);
    the help shows the field's default. Choices come from the field.

    Args:
        parser: the ``argparse.ArgumentParser`` (or argument group) to add the flags to.
        names: the field names to declare (None: every field with a flag).
        defaults_from: the config whose values the help shows as defaults (None: ``TrainConfig()``).
    """
    shown = defaults_from or TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["flag"] or (names is not None and f.name not in names):
            continue
        meta, default = f.metadata, getattr(shown, f.name)
        kwargs: dict[str, Any] = {"default": None, "dest": f.name}
        if meta["check"] is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = (lambda t: t) if meta["check"] is hidden_sizes else meta["check"]
            kwargs["nargs"] = meta["nargs"]
            kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = "N" if meta["nargs"] else None
        text = " ".join(map(str, default)) if isinstance(default, tuple) else default
        suffix = "" if default is None or default is False or default == () else f" (default: {text})"
        parser.add_argument(_flag(f.name), help=meta["help"] + suffix, **kwargs)
