"""The multilayer perceptron as a value: ``MLP(hidden=(128, 64), activation="relu")``."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .. import activations
from ..model import DEFAULT_INIT, INIT_SCHEMES, Params, forward, init_params


def _input_dim(input_shape) -> int:
    """Features per example: an int, or the product of a shape such as (28, 28)."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    return int(math.prod(int(s) for s in shape))


def _checked_rate(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout!r}")
    return float(dropout)


@dataclasses.dataclass(frozen=True)
class MLP:
    """Dense layers from the input through the ``hidden`` widths to ``num_classes``; the hidden ones
    use ``activation``.

    Args:
        hidden: the hidden layers' widths, e.g. ``(128, 64)`` (the notebook's).
        activation: the hidden layers' activation, a name from ``activations.NAMES``.
        dropout: inverted dropout after each hidden activation while training (``apply(train=True)``).
    """

    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    dropout: float = 0.0

    name: ClassVar[str] = "mlp"
    init_schemes: ClassVar[tuple[str, ...]] = INIT_SCHEMES
    fixed: ClassVar[str | None] = None  # every layer setting of TrainConfig applies
    eval_chunk: ClassVar[int] = 10000   # examples per compiled evaluation call

    def __post_init__(self) -> None:
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise ValueError(f"hidden: expected positive layer widths such as (128, 64), got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        activations.get(self.activation)
        object.__setattr__(self, "dropout", _checked_rate(self.dropout))

    @classmethod
    def from_config(cls, config: Any) -> MLP:
        """The MLP of a ``TrainConfig``: its hidden sizes, activation and dropout.

        Args:
            config: a ``TrainConfig`` (or anything with its ``hidden``, ``activation`` and ``dropout``).

        Returns:
            The ``MLP`` value.
        """
        return cls(hidden=tuple(config.hidden), activation=config.activation, dropout=float(config.dropout))

    def init(self, key: jax.Array, input_shape, num_classes: int, *, scheme: str = DEFAULT_INIT,
             dtype=jnp.float32) -> Params:
        """Fresh params ``[{"W": (fan_in, fan_out), "b": (fan_out,)}, ...]`` drawn from ``key``.

        Args:
            key: PRNG key (``model.init_params``'s: one per layer split off it).
            input_shape: features per example, an int (784) or a shape ((28, 28)).
            num_classes: the output layer's width.
            scheme: the weights' init, one of ``model.INIT_SCHEMES``.
            dtype: the leaves' dtype.

        Returns:
            The params: a list of one ``{"W", "b"}`` dict per layer.
        """
        return init_params(key, [_input_dim(input_shape), *self.hidden, int(num_classes)], scheme=scheme,
                           dtype=dtype)

    def apply(self, params: Params, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False) -> jax.Array:
        """Logits (N, C) for inputs x (N, D); dropout only when ``train`` and a ``key`` is given.

        Args:
            params: the params ``init`` returns.
            x: (N, D) inputs.
            key: PRNG key of the dropout masks.
            train: apply dropout (with ``key``).

        Returns:
            (N, C) logits.
        """
        return forward(params, x, key=key if train else None, dropout=self.dropout, activation=self.activation)

    def manual_grad(self, params: Params, x: jax.Array, y: jax.Array, *, key: jax.Array | None = None,
                    l2=0.0) -> Params:
        """The notebook's hand-derived gradient of the cross-entropy (plus ``l2 * l2_penalty``) of one
        minibatch (``jaxmlp.backprop.manual_grad``).

        Args:
            params: the params ``init`` returns.
            x: (N, D) inputs.
            y: (N,) integer labels.
            key: PRNG key of the dropout masks, drawn as ``apply(train=True)`` draws them.
            l2: the L2 penalty's weight.

        Returns:
            The gradient, a PyTree shaped like ``params``.
        """
        from ..backprop import manual_grad

        return manual_grad(params, x, y, activation=self.activation, l2=l2, dropout=self.dropout, key=key)

    def layer_key(self) -> tuple:
        """What fixes the params' shapes (besides the input and output widths).

        Returns:
            The hidden sizes: two models with equal keys have params of the same shapes.
        """
        return self.hidden

    def layer_mismatch(self, wanted: MLP) -> str:
        """Why params of this model do not fit ``wanted`` (called when their ``layer_key`` differ).

        Args:
            wanted: the model a run asks for.

        Returns:
            A phrase such as "has hidden sizes [128, 64], the run asks for [256, 128]".
        """
        return f"has hidden sizes {list(self.hidden)}, the run asks for {list(wanted.hidden)}"

    def units(self, input_dim: int, num_classes: int) -> int:
        """Activations kept per example in a forward pass (the memory estimate's batch term).

        Args:
            input_dim: features per example.
            num_classes: the output layer's width.

        Returns:
            The number of activations.
        """
        return sum(self.hidden) + num_classes + input_dim

    def describe(self) -> str:
        """One line for progress output.

        Returns:
            ``mlp in-128-64-out (relu)`` for the notebook's network.
        """
        return "mlp " + "-".join(map(str, ("in", *self.hidden, "out"))) + f" ({self.activation})"
