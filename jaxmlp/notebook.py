"""The seed notebook's own training run, reproduced exactly from the pure pieces.

The notebook trained with NumPy: ``np.random.seed(42)`` then ``randn * 0.01`` weights, a fresh
``np.random.permutation`` each epoch continuing the same stream, the hand-derived backprop, plain SGD,
the epsilon cross-entropy ``-sum(Y log(p + 1e-8)) / m`` and an epoch loss of ``sum(batch losses) /
(N // batch_size)``. Here the same stream comes from a private ``np.random.RandomState(seed)`` (the
legacy global RNG *is* a RandomState, so the draws are identical and NumPy's global state is never
touched), the arithmetic runs in float64 inside ``jax.enable_x64``, and the four rows of its table
come out to the last printed digit (tests/test_notebook_exact.py). Nothing here is used by
``runs.fit``: this module stands beside the engine, not inside it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .backprop import manual_grad
from .events import DivergenceError
from .handlers import DIVERGENCE_FACTOR
from .losses import cross_entropy, notebook_cross_entropy
from .model import Params, forward, forward_intermediates, init_params_numpy, softmax

REPLAY_LR, REPLAY_IMAGES = 0.01, 5  # the notebook's one test update before its first experiment


class NotebookResult(NamedTuple):
    """What ``fit_notebook`` returns: the trained ``params``, the ``history`` of epoch losses (the
    notebook's formula), the ``test_loss`` (the epsilon cross-entropy) and the ``test_accuracy`` (a
    fraction)."""

    params: Params
    history: list          # [{"epoch", "loss"}], the notebook's epoch-loss formula
    test_loss: float       # the epsilon cross-entropy
    test_accuracy: float   # a fraction in [0, 1]


@jax.jit
def _step(params: Params, x: jax.Array, y: jax.Array, lr) -> tuple[Params, jax.Array]:
    """One SGD step with the manual gradients; returns the new params and the batch's (epsilon loss,
    standard cross-entropy), both before the update."""
    cache = forward_intermediates(params, x)
    grads = manual_grad(params, x, y)
    last = len(params)
    losses = jnp.stack([notebook_cross_entropy(cache[f"A{last}"], y), cross_entropy(cache[f"Z{last}"], y)])
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), losses


@jax.jit
def _full_batches(params: Params, x: jax.Array, y: jax.Array, idx: jax.Array, lr) -> tuple[Params, jax.Array]:
    """``_step`` over the minibatches ``idx`` (K, B) of x (N, D), y (N,), in one scan."""
    def body(params, batch):
        # Gathered inside the step: a (K, B, D) copy of the epoch made beforehand cost a third of its time.
        return _step(params, x[batch], y[batch], lr)
    return jax.lax.scan(body, params, idx)


def _epoch(params: Params, x: jax.Array, y: jax.Array, perm: np.ndarray, lr: float, batch_size: int):
    """(params, the notebook's epoch loss, the batches' standard cross-entropies) of one epoch."""
    n = x.shape[0]
    num_full = n // batch_size
    head = jnp.asarray(perm[: num_full * batch_size].reshape(num_full, batch_size))
    params, losses = _full_batches(params, x, y, head, lr)
    losses = np.asarray(losses).reshape(-1, 2)
    if n % batch_size:  # the short last batch, as the notebook's slicing gives it
        tail = jnp.asarray(perm[num_full * batch_size:])
        params, last = _step(params, x[tail], y[tail], lr)
        losses = np.concatenate([losses, np.asarray(last)[None]])
    return params, float(np.sum(losses[:, 0])) / max(num_full, 1), losses[:, 1]


def _check_divergence(ce: np.ndarray, start: float, epoch: int, rule: bool) -> None:
    """DivergenceError when an epoch's cross-entropies are not finite or (``rule``) their mean passes
    ``DIVERGENCE_FACTOR`` x ``start``, as ``handlers.DivergenceRule`` judges a chunk."""
    if not np.all(np.isfinite(ce)):
        raise DivergenceError(f"the loss became non-finite in epoch {epoch}; training stopped (try a lower --lr)")
    if rule and float(np.mean(ce)) > DIVERGENCE_FACTOR * start:
        raise DivergenceError(f"the loss rose to {float(np.mean(ce)):.4g} in epoch {epoch}, over "
                              f"{DIVERGENCE_FACTOR:g}x its start ({start:.4g}): the run diverged; training stopped "
                              f"(try a lower --lr, or --no-divergence-check)")


def _check_args(data, lr, batch_size: int, epochs: int, seed: int, hidden) -> tuple:
    """The arguments of ``fit_notebook`` checked (ValueError naming the first bad one); hidden as a tuple."""
    from argparse import ArgumentTypeError

    from .checks import check_dataset
    from .config import hidden_sizes, nonneg_int, positive_float, positive_int

    for name, value, check in (("lr", lr, positive_float), ("batch_size", batch_size, positive_int),
                               ("epochs", epochs, positive_int), ("seed", seed, nonneg_int),
                               ("hidden", hidden, hidden_sizes)):
        try:
            check(value)
        except ArgumentTypeError as err:
            raise ValueError(f"{name}: {err}") from None
    hidden = hidden_sizes(hidden)
    check_dataset(data, num_classes=10)  # the notebook's network has 10 outputs
    return hidden


def _test(params: Params, x: jax.Array, y: jax.Array) -> tuple[float, float]:
    logits = forward(params, x)
    return float(notebook_cross_entropy(softmax(logits), y)), float(jnp.mean(jnp.argmax(logits, -1) == y))


def fit_notebook(data, *, lr: float = 0.1, batch_size: int = 32, epochs: int = 10, seed: int = 42,
                 hidden=(128, 64), replay_step: bool = False, on_epoch=None,
                 divergence: bool = True) -> NotebookResult:
    """Train as the seed notebook did on ``data`` and test.

    Args:
        data: a ``data.Dataset`` of uint8 images and labels 0..9.
        lr: the SGD learning rate (> 0).
        batch_size: examples per step; the notebook's short last batch when it doesn't divide N.
        epochs: passes over the training set.
        seed: the seed of the notebook's ``np.random`` stream (init, then one permutation per epoch).
        hidden: the hidden layer sizes, e.g. (128, 64) or ["256", "128"].
        replay_step: first apply the notebook's test update (lr 0.01 on the first 5 images), as its
            first run did (93.82% instead of 93.83% at lr 0.01).
        on_epoch: ``on_epoch(record)`` after every epoch.
        divergence: raise ``DivergenceError`` when an epoch's cross-entropy passes 10x its start (as
            the engine's rule); a non-finite loss stops the run either way.
    """
    from .data import normalize

    hidden = _check_args(data, lr, batch_size, epochs, seed, hidden)
    with jax.enable_x64(True):
        as_x = lambda a: normalize(np.asarray(a).reshape(len(a), -1), jnp.float64)  # noqa: E731
        x, y = as_x(data.x_train), jnp.asarray(np.asarray(data.y_train, np.int32))
        rng = np.random.RandomState(seed)
        params = init_params_numpy(rng, [x.shape[1], *hidden, 10])
        if replay_step:
            params, _ = _step(params, x[:REPLAY_IMAGES], y[:REPLAY_IMAGES], REPLAY_LR)
        history, start = [], None
        for e in range(epochs):
            params, value, ce = _epoch(params, x, y, rng.permutation(x.shape[0]), lr, batch_size)
            start = max(float(ce[0]), math.log(10)) if start is None else start
            _check_divergence(ce, start, e + 1, divergence)
            history.append({"epoch": e + 1, "loss": value})
            if on_epoch is not None:
                on_epoch(history[-1])
        test_loss, test_acc = _test(params, as_x(data.x_test), jnp.asarray(np.asarray(data.y_test, np.int32)))
    return NotebookResult(params, history, test_loss, test_acc)
