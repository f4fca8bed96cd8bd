"""Cross-entropy losses for the MLP.

``loss`` is the one training uses: mean cross-entropy computed from logits with log-softmax, which stays
finite however confident the model is. ``notebook_cross_entropy`` is the seed's ``-sum(Y log(p + 1e-8)) / m``,
kept for the notebook-exact mode's reported numbers.
"""
from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

from .model import Params, forward, log_softmax, softmax


def _as_one_hot(labels: jax.Array, num_classes: int, dtype) -> jax.Array:
    """``labels`` as (N, C): int labels (N,) are one-hot encoded, (N, C) targets pass through."""
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels.astype(dtype)
    raise ValueError(f"labels must be int (N,) or one-hot (N, {num_classes}), got shape {labels.shape}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``logits`` (N, C) against int ``labels`` (N,) or one-hot/soft targets (N, C)."""
    logp = log_softmax(logits)
    if labels.ndim == 1:
        # Gather instead of multiplying by a one-hot: same value, no (N, C) temporary.
        picked = jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
        return -jnp.mean(picked)
    targets = _as_one_hot(labels, logits.shape[-1], logp.dtype)
    return -jnp.sum(targets * logp) / logits.shape[0]


def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the MLP on a batch: x (N, D), y int (N,) or one-hot (N, C). Scalar."""
    return cross_entropy(forward(params, x), y)


def notebook_cross_entropy(probs: jax.Array, labels: jax.Array, eps: float = 1e-8) -> jax.Array:
    """The seed's loss on probabilities: ``-sum(Y * log(p + eps)) / m`` (N, C) -> scalar."""
    targets = _as_one_hot(labels, probs.shape[-1], probs.dtype)
    return -jnp.sum(targets * jnp.log(probs + eps)) / probs.shape[0]


def notebook_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """The notebook's ``compute_loss(Y, forward_propagation(X)[-1])``."""
    return notebook_cross_entropy(softmax(forward(params, x)), y)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax matches the label (int (N,) or one-hot (N, C))."""
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def l2_penalty(params: Params) -> jax.Array:
    """``0.5 * sum ||W||^2`` over layers (conv kernels included), scalar in W's dtype.

    Args:
        params: a list of ``{"W", "b"}`` layers. Biases are left out on purpose: they only shift
            activations and don't grow the function's sensitivity to its input (Krogh & Hertz).
    """
    weights = [layer["W"] for layer in params]
    if not weights:
        raise ValueError("params: l2_penalty needs at least one layer")
    return 0.5 * functools.reduce(operator.add, (jnp.sum(jnp.square(w)) for w in weights))
