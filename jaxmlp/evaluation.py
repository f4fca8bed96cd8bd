"""Evaluation and prediction of trained models, in chunks of examples to bound memory.

Each function takes the model first, as ``model.apply(params, x)`` does: a model value
(``jaxmlp.MLP(...)``, ``jaxmlp.CNN()``, the one a checkpoint stores) or any ``apply(params, x) ->
logits`` function, so a user's own model is scored by the same code. ``evaluate`` gives the mean loss
and accuracy, ``predict_labels`` / ``predict_probs`` the classes and probabilities.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .engine import batch_slices
from .losses import accuracy, cross_entropy
from .model import Params, softmax
from .models import as_apply

__all__ = ["evaluate", "Evaluation", "predict_labels", "predict_probs"]

_DEFAULT_CHUNK = 10000


def _apply_of(model: Any, where: str) -> Callable:
    """The model's ``(params, x) -> logits``; a TypeError that shows the call when params come first."""
    if isinstance(model, (list, tuple, dict)):
        raise TypeError(f"{where}(model, params, x, ...): the model comes first, e.g. "
                        f"{where}(jaxmlp.MLP(), params, x, ...) or {where}(apply_fn, params, x, ...)")
    return as_apply(model)


def _chunk(model: Any, chunk_size: int | None) -> int:
    """Examples per compiled call: ``chunk_size``, else the model's ``eval_chunk``, else 10000."""
    if chunk_size:
        return chunk_size
    return int(getattr(model, "eval_chunk", _DEFAULT_CHUNK))


def _eval_sums(model: Any, params, x, y):
    """(summed loss, summed correct) of the model (a value or an apply function) on one chunk x (n, D),
    y (n,). Compiled with the model static: equal model values share one program (their bound
    ``apply`` methods would not: a bound method compares its instance by identity)."""
    logits = as_apply(model)(params, x)
    return cross_entropy(logits, y) * x.shape[0], accuracy(logits, y) * x.shape[0]


_eval_chunk_jit = jax.jit(_eval_sums, static_argnums=0)


class Evaluation(NamedTuple):
    """What ``evaluate`` returns (a pair: ``loss, accuracy = evaluate(...)`` works too).

    Attributes:
        loss: the mean cross-entropy over the examples.
        accuracy: the fraction classified correctly, in [0, 1].
    """

    loss: float
    accuracy: float


def evaluate(model: Any, params: Params, x: jax.Array, y: jax.Array | None = None, *,
             chunk_size: int | None = None) -> Evaluation:
    """``(mean loss, accuracy in [0, 1])`` of the model on x (N, D), y int (N,), in chunks.

    Args:
        model: a model value (``jaxmlp.MLP(...)``) or an ``apply(params, x) -> logits`` function.
        params: the model's params.
        x: (N, D) inputs.
        y: (N,) int labels (or one-hot (N, C)).
        chunk_size: examples per compiled call (default: the model's ``eval_chunk``, else 10000).

    Returns:
        ``Evaluation(loss, accuracy)``: the mean cross-entropy and the accuracy, as Python floats.
    """
    _apply_of(model, "evaluate")
    if y is None:
        raise TypeError("evaluate(model, params, x, y): the labels y are missing")
    x, y = _checked(params, x, y, chunk_size)
    n = x.shape[0]
    total_loss = total_acc = 0.0
    for s in batch_slices(n, _chunk(model, chunk_size)):
        lo, ac = _eval_chunk_jit(model, params, x[s], y[s])
        total_loss += float(lo)
        total_acc += float(ac)
    return Evaluation(total_loss / n, total_acc / n)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict_chunk(model: Any, params, x, probs: bool):
    logits = as_apply(model)(params, x)
    return softmax(logits) if probs else jnp.argmax(logits, axis=-1)


def _num_classes(params) -> int | None:
    try:
        return int(np.shape(params[-1]["b"])[-1])
    except (TypeError, KeyError, IndexError):
        return None  # not a list of layers: the forward pass's own check names it


def _checked(params, x, y=None, chunk_size=None):
    """(x, y) checked on the host where they enter (``checks``): float inputs (N, D), N labels in the
    model's range (class indices, or one-hot rows of its width)."""
    from .checks import check_inputs, check_labels

    x = check_inputs(x)
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if y is None:
        return x, None
    labels, classes = np.asarray(y), _num_classes(params)
    if labels.ndim == 2 and labels.dtype.kind == "f":
        if labels.shape != (x.shape[0], classes or labels.shape[1]):
            raise ValueError(f"y: one-hot labels of shape {labels.shape} for {x.shape[0]} examples and {classes} "
                             f"classes")
        return x, jnp.asarray(labels)
    return x, jnp.asarray(check_labels(labels, classes, x.shape[0], "y"))


def _predict(model, params, x, probs, chunk_size, where) -> np.ndarray:
    _apply_of(model, where)
    x, _ = _checked(params, x, chunk_size=chunk_size)
    return np.concatenate([np.asarray(_predict_chunk(model, params, x[s], probs))
                           for s in batch_slices(x.shape[0], _chunk(model, chunk_size))])


def predict_labels(model: Any, params: Params, x: jax.Array, *, chunk_size: int | None = None) -> np.ndarray:
    """Predicted classes (N,) as a numpy int array: the argmax of the logits.

    Args:
        model: a model value or an ``apply(params, x) -> logits`` function.
        params: the model's params.
        x: (N, D) inputs.
        chunk_size: examples per compiled call.

    Returns:
        (N,) integer class indices.
    """
    return _predict(model, params, x, False, chunk_size, "predict_labels")


def predict_probs(model: Any, params: Params, x: jax.Array, *, chunk_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, C): softmax of the logits.

    Args:
        model: a model value or an ``apply(params, x) -> logits`` function.
        params: the model's params.
        x: (N, D) inputs.
        chunk_size: examples per compiled call.

    Returns:
        (N, C) probabilities as a numpy array of the params' dtype; rows sum to 1.
    """
    return _predict(model, params, x, True, chunk_size, "predict_probs")
