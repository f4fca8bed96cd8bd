"""The teaching step: one jitted SGD update with ``jax.grad``, and the notebook's loop over it.

For notebooks and for reading: the engine (``engine.py``) runs the same update inside compiled chunks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .engine import batch_slices
from .losses import loss
from .model import Params

__all__ = ["sgd_step", "train_epoch_loop"]


@jax.jit
def sgd_step(params: Params, x: jax.Array, y: jax.Array, lr: float) -> tuple[Params, jax.Array]:
    """One minibatch SGD update with ``jax.grad`` at learning rate ``lr``.

    Args:
        params: a list of ``{"W", "b"}`` layers.
        x: (B, D) inputs.
        y: (B,) integer labels or (B, C) one-hot rows.
        lr: the learning rate.

    Returns:
        ``(new params, the batch's loss before the update)``.
    """
    value, grads = jax.value_and_grad(loss)(params, x, y)
    new_params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
    return new_params, value


def train_epoch_loop(params: Params, x: jax.Array, y: jax.Array, key: jax.Array, lr: float,
                     batch_size: int) -> tuple[Params, jax.Array]:
    """One epoch as a Python loop over ``sgd_step`` (the notebook's loop, jitted step by step).

    Args:
        params: a list of ``{"W", "b"}`` layers.
        x: (N, D) inputs.
        y: (N,) integer labels.
        key: PRNG key of the epoch's permutation.
        lr: the learning rate.
        batch_size: examples per step, a positive int.

    Returns:
        ``(params, per-batch losses (num_batches,))``.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    perm = jax.random.permutation(key, x.shape[0])
    xs, ys = x[perm], y[perm]
    losses = []
    for s in batch_slices(x.shape[0], batch_size):
        params, value = sgd_step(params, xs[s], ys[s], lr)
        losses.append(value)
    return params, jnp.stack(losses)
