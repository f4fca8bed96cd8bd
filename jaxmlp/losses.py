"""Cross-entropy losses for the MLP.

``loss`` is the one training uses: mean cross-entropy computed from logits with log-softmax, which stays
finite however confident the model is. ``notebook_cross_entropy`` is the seed's ``-sum(Y log(p + 1e-8)) / m``,
kept for the notebook-exact mode's reported numbers.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp

from .model import Params, check_inputs, forward, log_softmax, softmax


def check_labels(labels: jax.Array, rows: int, against: str = "x") -> None:
    """One ValueError naming ``labels`` unless they are (N,) or (N, C) with N = ``rows``. Shapes only, so
    free under jit.

    Args:
        labels: the labels to check.
        rows: the row count of what they label.
        against: the name of what they label (the inputs or logits), for the message.
    """
    shape = jnp.shape(labels)
    if len(shape) not in (1, 2):
        raise ValueError(f"labels: expected int (N,) or one-hot (N, C), got shape {shape}")
    if shape[0] != rows:
        raise ValueError(f"labels: {shape[0]} labels for {rows} rows of {against}")
    if rows == 0:
        raise ValueError(f"{against}: no rows (an empty batch): the mean loss of no examples is undefined")


def _as_one_hot(labels: jax.Array, num_classes: int, dtype) -> jax.Array:
    """``labels`` as (N, ``num_classes``) in ``dtype``: int labels (N,) are one-hot encoded, (N, C) targets
    pass through."""
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels.astype(dtype)
    raise ValueError(f"labels must be int (N,) or one-hot (N, {num_classes}), got shape {labels.shape}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``logits`` (N, C) against int ``labels`` (N,) or one-hot/soft targets (N, C).

    Args:
        logits: (N, C) unnormalised scores.
        labels: (N,) integer classes, or (N, C) one-hot or soft targets.

    Returns:
        The mean over the N rows, a scalar of the logits' dtype.
    """
    check_labels(labels, jnp.shape(logits)[0], "logits")
    logp = log_softmax(logits)
    if labels.ndim == 1:
        # Gather instead of multiplying by a one-hot: same value, no (N, C) temporary.
        picked = jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
        return -jnp.mean(picked)
    targets = _as_one_hot(labels, logits.shape[-1], logp.dtype)
    return -jnp.sum(targets * logp) / logits.shape[0]


def loss(params: Params, x: jax.Array, y: jax.Array, *, activation: str | Callable = "relu", l2=0.0,
         dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy of the MLP ``params`` on a batch, plus ``l2 * l2_penalty(params)``. Scalar.

    Args:
        params: a list of ``{"W", "b"}`` layers (``model.init_params``').
        x: inputs (N, D).
        y: int labels (N,) or one-hot (N, C).
        activation, dropout, key: as in ``model.forward`` (dropout only with a key).
        l2: weight of the L2 penalty (a number or a traced scalar); a Python 0 leaves the term out.

    Returns:
        The loss, a scalar of the params' dtype.
    """
    check_inputs(params, x)
    check_labels(y, jnp.shape(x)[0])
    value = cross_entropy(forward(params, x, key=key, dropout=dropout, activation=activation), y)
    if _is_zero(l2):
        return value
    return value + l2 * l2_penalty(params)


def _is_zero(l2) -> bool:
    """True for a Python (or NumPy) number equal to 0: the L2 term is then left out of the arithmetic."""
    return isinstance(l2, (int, float)) and not isinstance(l2, bool) and l2 == 0


def notebook_cross_entropy(probs: jax.Array, labels: jax.Array, eps: float = 1e-8) -> jax.Array:
    """The seed's loss: ``-sum(Y * log(p + eps)) / m``.

    Args:
        probs: (N, C) softmax probabilities.
        labels: (N,) integer classes or (N, C) one-hot rows.
        eps: added to the probabilities before the log, as the seed does.

    Returns:
        A scalar of the probabilities' dtype.
    """
    targets = _as_one_hot(labels, probs.shape[-1], probs.dtype)
    return -jnp.sum(targets * jnp.log(probs + eps)) / probs.shape[0]


def notebook_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """The notebook's ``compute_loss(Y, forward_propagation(X)[-1])`` of ``params``.

    Args:
        params: a list of ``{"W", "b"}`` layers.
        x: (N, D) inputs.
        y: (N,) integer labels or (N, C) one-hot rows.

    Returns:
        A scalar of the params' dtype.
    """
    check_labels(y, jnp.shape(x)[0])
    return notebook_cross_entropy(softmax(forward(params, x)), y)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows of ``logits`` (N, C) whose argmax matches ``labels``.

    Args:
        logits: (N, C) scores (or probabilities).
        labels: (N,) integer classes or (N, C) one-hot rows.

    Returns:
        A float scalar in [0, 1].
    """
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def l2_penalty(params: Params) -> jax.Array:
    """``0.5 * sum ||W||^2`` over layers (conv kernels included), scalar in W's dtype.

    Args:
        params: a list of ``{"W", "b"}`` layers. Biases are left out on purpose: they only shift
            activations and don't grow the function's sensitivity to its input (Krogh & Hertz).

    Returns:
        A scalar of the weights' dtype.
    """
    weights = [layer["W"] for layer in params]
    if not weights:
        raise ValueError("params: l2_penalty needs at least one layer")
    return 0.5 * functools.reduce(operator.add, (jnp.sum(jnp.square(w)) for w in weights))
