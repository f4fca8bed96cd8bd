"""The convolutional network as a value: ``CNN(channels=(32, 64), hidden=128)`` (see ``jaxmlp.cnn``)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ..cnn import CONV_IMPLS, cnn_forward, init_cnn_params
from ..model import Params
from .mlp import _checked_rate


def _in_shape(input_shape) -> tuple[int, int, int]:
    """(H, W, C) of one image: from (H, W, C), (H, W), or a flat width of square one-channel images."""
    if isinstance(input_shape, int):
        side = math.isqrt(input_shape)
        if side * side != input_shape:
            raise ValueError(f"input_shape: {input_shape} features are not square one-channel images; "
                             f"pass (H, W, C)")
        return side, side, 1
    shape = tuple(int(s) for s in input_shape)
    return (*shape, 1) if len(shape) == 2 else shape  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class CNN:
    """``[conv3x3 -> relu -> maxpool 2x2] * len(channels) -> dense(hidden) -> relu -> dense(classes)``.

    Args:
        channels: the conv blocks' output channels.
        hidden: the dense layer's width.
        dropout: inverted dropout after the hidden dense layer while training.
        conv_impl: "auto", "xla" or "im2col" (``jaxmlp.cnn``): the same function, computed two ways.
    """

    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    dropout: float = 0.0
    conv_impl: str = "auto"

    name: ClassVar[str] = "cnn"
    init_schemes: ClassVar[tuple[str, ...]] = ("he",)
    fixed: ClassVar[str | None] = "the CNN's layers are fixed (conv32-conv64-dense128, He init, ReLU)"
    eval_chunk: ClassVar[int] = 1000  # the im2col patches take ~0.2 MB per image: ~200 MB a chunk
    # Its init runs op by op: compiled, XLA folds the He scale into the sampler's constants and changes the
    # weights' last bits (the MLP's init is one barrier-protected program), so sweeps don't jit it either.
    eager_init: ClassVar[bool] = True

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels) or not (
                isinstance(self.hidden, int) and self.hidden > 0):
            raise ValueError(f"channels/hidden: expected positive sizes, got {self.channels!r}, {self.hidden!r}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl: expected one of {', '.join(CONV_IMPLS)}, got {self.conv_impl!r}")
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "dropout", _checked_rate(self.dropout))

    @classmethod
    def from_config(cls, config: Any) -> CNN:
        """The CNN of a ``TrainConfig``: the fixed layers, with its dropout.

        Args:
            config: a ``TrainConfig`` (or anything with its ``dropout``).

        Returns:
            The ``CNN`` value.
        """
        return cls(dropout=float(config.dropout))

    def init(self, key: jax.Array, input_shape, num_classes: int, *, scheme: str = "he",
             dtype=jnp.float32) -> Params:
        """He-normal params (``jaxmlp.cnn.init_cnn_params``) drawn from ``key``.

        Args:
            key: PRNG key.
            input_shape: one image's shape, (H, W, C) or (H, W), or a flat width of square one-channel
                images (784).
            num_classes: the output layer's width.
            scheme: the weights' init; only "he".
            dtype: the leaves' dtype.

        Returns:
            The params, a PyTree of the conv and dense layers' weights and biases.
        """
        if scheme != "he":
            raise ValueError(f"scheme: the CNN's init is He's; got {scheme!r}")
        return init_cnn_params(key, in_shape=_in_shape(input_shape), channels=self.channels, hidden=self.hidden,
                               num_classes=int(num_classes), dtype=dtype)

    def apply(self, params: Params, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False) -> jax.Array:
        """Logits (N, C) for images x; dropout only when ``train`` with a key.

        Args:
            params: the params ``init`` returns.
            x: (N, H*W*C) or (N, H, W[, C]) images.
            key: PRNG key of the dropout mask.
            train: apply dropout (with ``key``).

        Returns:
            (N, C) logits.
        """
        return cnn_forward(params, x, key=key if train else None, dropout=self.dropout, conv_impl=self.conv_impl)

    def layer_key(self) -> tuple:
        """What fixes the params' shapes (besides the input and output widths).

        Returns:
            ``(channels, hidden)``: two models with equal keys have params of the same shapes.
        """
        return self.channels, self.hidden

    def layer_mismatch(self, wanted: CNN) -> str:
        """Why params of this model do not fit ``wanted`` (called when their ``layer_key`` differ).

        Args:
            wanted: the model a run asks for.

        Returns:
            A phrase that names both models' channels and hidden width.
        """
        return (f"has channels {list(self.channels)} and hidden {self.hidden}, the run asks for "
                f"{list(wanted.channels)} and {wanted.hidden}")

    def units(self, input_dim: int, num_classes: int) -> int:
        """Activations kept per example (the first block's, three copies: conv, relu, im2col).

        Args:
            input_dim: pixels per image.
            num_classes: the output layer's width (unused: the first block dominates).

        Returns:
            The number of activations.
        """
        del num_classes
        return self.channels[0] * input_dim * 3

    def describe(self) -> str:
        """One line for progress output.

        Returns:
            "cnn".
        """
        return "cnn"
