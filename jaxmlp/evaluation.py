"""Evaluation and prediction of trained models, in chunks of examples to bound memory.

``apply_fn(arch, activation)`` is the forward function of a built-in architecture; ``evaluate`` gives
the mean loss and accuracy, ``predict_labels`` / ``predict_probs`` the classes and probabilities.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .engine import batch_slices
from .losses import accuracy, cross_entropy
from .model import Params, forward, softmax

__all__ = ["apply_fn", "evaluate", "predict_labels", "predict_probs"]


def apply_fn(arch: str, activation: str = "relu") -> Callable:
    """The forward function ``(params, x, *, key=None, dropout=0.0) -> logits`` of an architecture.

    Args:
        arch: "mlp" or "cnn".
        activation: the MLP's hidden activation (a name from ``model.ACTIVATIONS``).
    """
    if arch == "mlp":
        return forward if activation == "relu" else functools.partial(forward, activation=activation)
    if arch == "cnn":
        from .cnn import cnn_forward
        return cnn_forward
    raise ValueError(f"arch: unknown architecture {arch!r}; choose mlp or cnn")


def _eval_chunk(params, x, y, arch: str, activation: str = "relu"):
    logits = apply_fn(arch, activation)(params, x)
    return cross_entropy(logits, y) * x.shape[0], accuracy(logits, y) * x.shape[0]


_eval_chunk_jit = jax.jit(_eval_chunk, static_argnames=("arch", "activation"))


def _default_chunk(arch: str) -> int:
    # The CNN's im2col patches take ~0.2 MB per image; 1000 images keep a chunk near 200 MB.
    return 1000 if arch == "cnn" else 10000


def evaluate(params: Params, x: jax.Array, y: jax.Array, *, arch: str = "mlp", activation: str = "relu",
             chunk_size: int | None = None) -> tuple[float, float]:
    """``(mean loss, accuracy in [0, 1])`` of the model on x (N, D), y int (N,), in chunks.

    Args:
        params: the model's params.
        x: (N, D) inputs.
        y: (N,) int labels (or one-hot (N, C)).
        arch: "mlp" or "cnn".
        activation: the MLP's hidden activation.
        chunk_size: examples per compiled call (default: 10000 for the MLP, 1000 for the CNN).
    """
    x, y = _checked(params, x, y, chunk_size)
    n = x.shape[0]
    total_loss = total_acc = 0.0
    for s in batch_slices(n, chunk_size or _default_chunk(arch)):
        lo, ac = _eval_chunk_jit(params, x[s], y[s], arch, activation)
        total_loss += float(lo)
        total_acc += float(ac)
    return total_loss / n, total_acc / n


@functools.partial(jax.jit, static_argnames=("arch", "probs", "activation"))
def _predict_chunk(params, x, arch: str, probs: bool, activation: str = "relu"):
    logits = apply_fn(arch, activation)(params, x)
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


def _predict(params, x, arch, probs, activation, chunk_size) -> np.ndarray:
    x, _ = _checked(params, x, chunk_size=chunk_size)
    return np.concatenate([np.asarray(_predict_chunk(params, x[s], arch, probs, activation))
                           for s in batch_slices(x.shape[0], chunk_size or _default_chunk(arch))])


def predict_labels(params: Params, x: jax.Array, *, arch: str = "mlp", activation: str = "relu",
                   chunk_size: int | None = None) -> np.ndarray:
    """Predicted classes (N,) as a numpy int array.

    Args:
        params: the model's params.
        x: (N, D) inputs.
        arch: "mlp" or "cnn".
        activation: the MLP's hidden activation.
        chunk_size: examples per compiled call.
    """
    return _predict(params, x, arch, False, activation, chunk_size)


def predict_probs(params: Params, x: jax.Array, *, arch: str = "mlp", activation: str = "relu",
                  chunk_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, C) as a numpy array of the params' dtype: softmax of the logits.

    Args:
        params: the model's params.
        x: (N, D) inputs.
        arch: "mlp" or "cnn".
        activation: the MLP's hidden activation.
        chunk_size: examples per compiled call.
    """
    return _predict(params, x, arch, True, activation, chunk_size)
