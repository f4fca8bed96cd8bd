"""What a configured run starts from, from its ``TrainConfig`` alone: the params' dtype, the inputs, the
validation split, the model's fresh params and the shapes of the whole state (what its checkpoint holds).
Nothing here trains or reads a file; ``runs`` builds and trains runs on top of it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import models
from .chunks import TrainState, init_state, precision
from .config import ConfigError, TrainConfig, hparams
from .model import Params
from .spec import make_optimizer, spec_for

__all__ = ["param_dtype", "dtype_of", "prepare", "split_validation", "check_split", "init_scheme", "init_model",
           "state_template", "param_count"]


def param_dtype(name: str):
    """The params' and inputs' dtype of a run.

    Args:
        name: the run's ``TrainConfig.dtype``.

    Returns:
        ``jnp.float64`` for "float64", else ``jnp.float32`` (bfloat16 runs keep float32 params: only
        their forward pass is bfloat16).
    """
    return jnp.float64 if name == "float64" else jnp.float32


def dtype_of(config: TrainConfig):
    """The float dtype of ``config``'s params and inputs.

    Args:
        config: a ``TrainConfig``.

    Returns:
        ``param_dtype(config.dtype)``.
    """
    return param_dtype(config.dtype)


def prepare(images: np.ndarray, dtype) -> jax.Array:
    """Images as a model's inputs (the CNN reshapes its inputs itself).

    Args:
        images: (N, H, W) uint8.
        dtype: the inputs' float dtype.

    Returns:
        (N, H*W) float inputs of ``dtype`` in [0, 1], on the device.
    """
    from .data import normalize

    images = np.asarray(images)
    return normalize(images.reshape(images.shape[0], -1), dtype)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation examples of a split.

    Args:
        n: the number of examples.
        fraction: the fraction held out.
        seed: the seed of the shuffle that picks them.

    Returns:
        (train indices, validation indices), each sorted: the last ``round(fraction * n)`` of a seeded
        shuffle are held out.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(order[: n - n_val]), np.sort(order[n - n_val:])


def check_split(num_examples: int, val_split: float) -> tuple[int, int]:
    """(examples trained on, examples held out) of a ``val_split`` of ``num_examples``; a split that
    leaves either side empty is refused (``config.ConfigError`` naming ``TrainConfig.val_split``).

    Args:
        num_examples: the size of the training set before the split.
        val_split: the fraction held out for validation (0: none).

    Returns:
        (examples trained on, examples held out).
    """
    held = int(round(val_split * num_examples))
    if val_split and held == 0:
        raise ConfigError(f"TrainConfig.val_split {val_split:g} of {num_examples} training examples holds out none; "
                          f"use at least {1 / num_examples:.2g}")
    if held >= num_examples:
        raise ConfigError(f"TrainConfig.val_split {val_split:g} of {num_examples} training examples leaves none to "
                          f"train on")
    return num_examples - held, held


def init_scheme(config: TrainConfig) -> str:
    """The init scheme ``config``'s model draws with.

    Args:
        config: a ``TrainConfig``.

    Returns:
        ``config.init`` where the model offers a choice, else the model's own (the CNN's is He's).
    """
    schemes = models.model_class(config.arch).init_schemes
    return config.init if config.init in schemes else schemes[0]


def init_model(config: TrainConfig, key: jax.Array, input_dim: int, num_classes: int) -> Params:
    """Fresh params of ``config``'s model (``models.from_config``).

    Args:
        config: the run's ``TrainConfig``.
        key: PRNG key of the draw.
        input_dim: features per example (square images for the CNN).
        num_classes: the outputs.

    Returns:
        The params, in ``dtype_of(config)``.
    """
    return models.from_config(config).init(key, input_dim, num_classes, scheme=init_scheme(config),
                                           dtype=dtype_of(config))


def state_template(config: TrainConfig, input_dim: int, num_classes: int) -> TrainState:
    """What the checkpoint of a run must hold.

    Args:
        config: the run's ``TrainConfig``.
        input_dim: features per example.
        num_classes: the outputs.

    Returns:
        A ``TrainState`` of ``jax.ShapeDtypeStruct`` leaves: the shapes and dtypes of the run's state.
    """
    spec = spec_for(config, 1)

    def build(key):
        return init_state(init_model(config, key, input_dim, num_classes),
                          make_optimizer(spec, hparams(config, dtype_of(config))), key)

    with precision(config.dtype):
        return jax.eval_shape(build, jax.random.PRNGKey(0))


def param_count(config: TrainConfig, input_dim: int, num_classes: int) -> int:
    """The parameter count of ``config``'s model, from shapes alone (nothing is allocated).

    Args:
        config: the run's ``TrainConfig``.
        input_dim: features per example.
        num_classes: the outputs.

    Returns:
        The number of scalars in the model's params.
    """
    shapes = jax.eval_shape(lambda k: init_model(config, k, input_dim, num_classes), jax.random.PRNGKey(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))
