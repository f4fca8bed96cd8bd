"""The seed notebook's own training run, reproduced exactly from the pure pieces.

The notebook trained with NumPy: ``np.random.seed(42)`` then ``randn * 0.01`` weights, a fresh
``np.random.permutation`` each epoch continuing the same stream, the hand-derived backprop, plain SGD,
the epsilon cross-entropy ``-sum(Y log(p + 1e-8)) / m`` and an epoch loss of ``sum(batch losses) /
(N // batch_size)``. Here the same stream comes from a private ``np.random.RandomState(seed)`` (the
legacy global RNG *is* a RandomState, so the draws are identical and NumPy's global state is never
touched), the arithmetic runs in float64 inside ``jax.enable_x64``, and the four rows of its table
come out to the last printed digit (tests/test_notebook_exact.py). Nothing here is used by
``train.fit``: this module stands beside the engine, not inside it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .backprop import manual_grad
from .losses import notebook_cross_entropy
from .model import Params, forward, forward_intermediates, init_params_numpy, softmax

REPLAY_LR, REPLAY_IMAGES = 0.01, 5  # the notebook's one test update before its first experiment


class NotebookResult(NamedTuple):
    params: Params
    history: list          # [{"epoch", "loss"}], the notebook's epoch-loss formula
    test_loss: float       # the epsilon cross-entropy
    test_accuracy: float   # a fraction in [0, 1]


@jax.jit
def _step(params: Params, x: jax.Array, y: jax.Array, lr) -> tuple[Params, jax.Array]:
    """One SGD step with the manual gradients; returns the new params and the batch's epsilon loss."""
    probs = forward_intermediates(params, x)[f"A{len(params)}"]
    grads = manual_grad(params, x, y)
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), notebook_cross_entropy(probs, y)


@jax.jit
def _full_batches(params: Params, xs: jax.Array, ys: jax.Array, lr) -> tuple[Params, jax.Array]:
    """``_step`` over batches xs (K, B, D), ys (K, B) in one scan."""
    def body(params, batch):
        return _step(params, *batch, lr)
    return jax.lax.scan(body, params, (xs, ys))


def _epoch(params: Params, x: jax.Array, y: jax.Array, perm: np.ndarray, lr: float, batch_size: int):
    n = x.shape[0]
    num_full = n // batch_size
    head = jnp.asarray(perm[: num_full * batch_size].reshape(num_full, batch_size))
    params, losses = _full_batches(params, x[head], y[head], lr)
    total = float(np.sum(np.asarray(losses)))
    if n % batch_size:  # the short last batch, as the notebook's slicing gives it
        tail = jnp.asarray(perm[num_full * batch_size:])
        params, last = _step(params, x[tail], y[tail], lr)
        total += float(last)
    return params, total / max(num_full, 1)


def _test(params: Params, x: jax.Array, y: jax.Array) -> tuple[float, float]:
    logits = forward(params, x)
    return float(notebook_cross_entropy(softmax(logits), y)), float(jnp.mean(jnp.argmax(logits, -1) == y))


def fit_notebook(data, *, lr: float = 0.1, batch_size: int = 32, epochs: int = 10, seed: int = 42,
                 hidden=(128, 64), replay_step: bool = False, on_epoch=None) -> NotebookResult:
    """Train as the seed notebook did on ``data`` (a ``data.Dataset``) and test.

    replay_step: first apply the notebook's test update (lr 0.01 on the first 5 images), as its first
    run did (93.82% instead of 93.83% at lr 0.01). ``on_epoch(record)`` after every epoch.
    """
    from .data import normalize

    with jax.enable_x64(True):
        as_x = lambda a: normalize(np.asarray(a).reshape(len(a), -1), jnp.float64)  # noqa: E731
        x, y = as_x(data.x_train), jnp.asarray(np.asarray(data.y_train, np.int32))
        rng = np.random.RandomState(seed)
        params = init_params_numpy(rng, [x.shape[1], *hidden, 10])
        if replay_step:
            params, _ = _step(params, x[:REPLAY_IMAGES], y[:REPLAY_IMAGES], REPLAY_LR)
        history = []
        for e in range(epochs):
            params, value = _epoch(params, x, y, rng.permutation(x.shape[0]), lr, batch_size)
            history.append({"epoch": e + 1, "loss": value})
            if on_epoch is not None:
                on_epoch(history[-1])
        test_loss, test_acc = _test(params, as_x(data.x_test), jnp.asarray(np.asarray(data.y_test, np.int32)))
    return NotebookResult(params, history, test_loss, test_acc)
