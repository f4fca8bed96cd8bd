"""Transfer-learning helpers on the MLP params format (a list of ``{"W", "b"}`` dicts).

Typical use: take trained params, give them a new head for a new label set, freeze the body,
and train only the head::

    params = replace_head(key, params, num_classes=5)
    opt = optim.freeze(optim.adam(1e-3), trainable_mask(params, freeze=[0, 1]))
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import jax

from jaxmlp.model import init_layer

__all__ = ["replace_head", "trainable_mask"]


def replace_head(key: jax.Array, params: list[dict], num_classes: int, scheme: str = "he") -> list[dict]:
    """A new params list whose last layer is freshly initialised with ``num_classes`` outputs and the
    old head's fan_in and dtype.

    Args:
        key: PRNG key of the new head's weights.
        params: a list of dense ``{"W", "b"}`` layers.
        num_classes: the new head's width.
        scheme: "he", "glorot" or "notebook" (see :func:`jaxmlp.model.init_layer`).

    Returns:
        The new list; the other layers are the *same* objects, untouched.
    """
    if not params:
        raise ValueError("replace_head: params has no layers")
    if int(num_classes) <= 0:
        raise ValueError(f"replace_head: num_classes must be positive, got {num_classes}")
    old = params[-1]["W"]
    if old.ndim != 2:
        raise ValueError(f"replace_head: the last layer must be dense (fan_in, fan_out), got W {old.shape}")
    head = init_layer(key, int(old.shape[0]), int(num_classes), scheme, old.dtype)
    return list(params[:-1]) + [head]


def trainable_mask(params: list[dict], freeze: Sequence[int] = ()) -> list[dict]:
    """Which leaves of ``params`` train, for :func:`jaxmlp.optim.freeze`.

    Args:
        params: a list of layers.
        freeze: indices of the layers to freeze, negative allowed (-1 is the head).

    Returns:
        A PyTree of Python bools matching ``params``: False for every leaf of the frozen layers, True
        elsewhere. Raises ValueError for an out-of-range index.
    """
    n = len(params)
    frozen = set()
    for i in freeze:
        try:
            j = operator.index(i)  # ints and numpy ints; floats/strings are errors
        except TypeError:
            j = None
        if j is None or isinstance(i, bool) or not -n <= j < n:
            raise ValueError(f"trainable_mask: freeze: layer index {i!r} out of range for {n} layers "
                             f"(use 0..{n - 1} or -{n}..-1)")
        frozen.add(j % n)
    return [jax.tree_util.tree_map(lambda _, t=(i not in frozen): t, layer) for i, layer in enumerate(params)]
