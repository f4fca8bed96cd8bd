"""The hidden layers' activations: each name once, with its function and its hand-derived derivative.

``get(name)`` is the one lookup: ``model.forward`` applies ``get(name).fn`` and ``backprop.manual_grad``
multiplies by ``get(name).derivative``. A new activation is one ``Activation`` entry in ``REGISTRY``;
the config's choices, the CLI's flags and the gradient tests follow from ``NAMES``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Activation", "REGISTRY", "NAMES", "get", "relu", "gelu"]


class Activation(NamedTuple):
    """An elementwise activation and its derivative.

    Attributes:
        fn: ``z -> act(z)``, any shape.
        derivative: ``z -> act'(z)``, written by hand (no autodiff), same shape as ``z``.
    """

    fn: Callable[[jax.Array], jax.Array]
    derivative: Callable[[jax.Array], jax.Array]


def relu(z: jax.Array) -> jax.Array:
    """``max(z, 0)`` elementwise, with derivative 0 at exactly 0.

    Args:
        z: pre-activations, any shape.

    Returns:
        An array of z's shape and dtype.
    """
    # jnp.where rather than jnp.maximum: its derivative at exactly 0 is 0, the notebook's ``Z > 0`` mask
    # (jnp.maximum's gradient splits the tie and gives 0.5 there).
    return jnp.where(z > 0, z, jnp.zeros_like(z))


def gelu(z: jax.Array) -> jax.Array:
    """Exact GELU ``z * Phi(z)`` elementwise, Phi the standard normal CDF (not the tanh approximation).

    Args:
        z: pre-activations, any shape.

    Returns:
        An array of z's shape and dtype.
    """
    return jax.nn.gelu(z, approximate=False)


def _relu_derivative(z: jax.Array) -> jax.Array:
    return z > 0  # the notebook's mask: 0 at the kink, as relu's autodiff


def _tanh_derivative(z: jax.Array) -> jax.Array:
    return 1 - jnp.tanh(z) ** 2


def _sigmoid_derivative(z: jax.Array) -> jax.Array:
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def _gelu_derivative(z: jax.Array) -> jax.Array:
    # gelu(z) = z Phi(z), so gelu' = Phi(z) + z phi(z), phi the standard normal density.
    return 0.5 * jax.lax.erfc(-z * math.sqrt(0.5)) + z * jnp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


REGISTRY: dict[str, Activation] = {
    "relu": Activation(relu, _relu_derivative),
    "tanh": Activation(jnp.tanh, _tanh_derivative),
    "sigmoid": Activation(jax.nn.sigmoid, _sigmoid_derivative),
    "gelu": Activation(gelu, _gelu_derivative),
}
NAMES = tuple(REGISTRY)


def get(name: str) -> Activation:
    """The ``Activation`` called ``name``; ValueError naming the known ones otherwise.

    Args:
        name: one of ``NAMES``.

    Returns:
        The registry's ``Activation``: its function and its hand-derived derivative.
    """
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    raise ValueError(f"activation: unknown {name!r}; choose one of {', '.join(NAMES)}")
