"""The seed notebook's own training run, reproduced exactly from the pure pieces.

The notebook trained with NumPy: ``np.random.seed(42)`` then ``randn * 0.01`` weights, a fresh
``np.random.permutation`` each epoch continuing the same stream, the hand-derived backprop, plain SGD,
the epsilon cross-entropy ``-sum(Y log(p + 1e-8)) / m`` and an epoch loss of ``sum(batch losses) /
(N // batch_size)``. Here the same stream comes from a private ``np.random.RandomState(seed)`` (the
legacy global RNG *is* a RandomState, so the draws are identical and NumPy's global state is never
touched), the arithmetic runs in float64 inside ``jax.enable_x64``, and the four rows of its table
come out to the last printed digit (tests/test_notebook_exact.py). Nothing here is used by
``runs.fit``: this module stands beside the engine, not inside it.

Runs that differ only in lr share the stream, so they train together: ``fit_notebook_group``, one
program vmapped over their learning rates (``jaxmlp reproduce seed``, manifests' reruns);
``fit_notebook`` is its group of one. Divergence is judged by ``divergence.diverged``, as the engine's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._compat import enable_x64
from .backprop import manual_grad
from .divergence import diverged, message, reference_loss
from .events import DivergenceError, StopRun
from .losses import cross_entropy, notebook_cross_entropy
from .model import Params, forward, forward_intermediates, init_params_numpy, softmax

REPLAY_LR, REPLAY_IMAGES = 0.01, 5  # the notebook's one test update before its first experiment


class NotebookResult(NamedTuple):
    """What ``fit_notebook`` returns.

    Attributes:
        params: the trained params, a list of float64 ``{"W", "b"}`` layers.
        history: the epoch losses (the notebook's formula).
        test_loss: the test set's epsilon cross-entropy.
        test_accuracy: the test accuracy, a fraction.
    """

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
    """DivergenceError when an epoch's cross-entropies ``ce`` (steps,) mean divergence against the run's
    reference ``start`` (``divergence.diverged``; ``rule``: apply its 10x rule)."""
    reason = str(diverged(ce, start, rule=rule))
    if reason:
        raise DivergenceError(message(reason, f"in epoch {epoch}", float(np.mean(ce)), start))


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
    """Train as the seed notebook did on ``data`` and test (``fit_notebook_group`` with one lr).

    Args:
        data: a ``data.Dataset`` of uint8 images and labels 0..9.
        lr: the SGD learning rate (> 0).
        batch_size: examples per step; the notebook's short last batch when it doesn't divide N.
        epochs: passes over the training set.
        seed: the seed of the notebook's ``np.random`` stream (init, then one permutation per epoch).
        hidden: the hidden layer sizes, e.g. (128, 64) or ["256", "128"].
        replay_step: first apply the notebook's test update (lr 0.01 on the first 5 images), as its
            first run did (93.82% instead of 93.83% at lr 0.01).
        on_epoch: ``on_epoch(record)`` after every epoch; raising ``events.StopRun`` ends the run there.
        divergence: raise ``DivergenceError`` when an epoch's cross-entropy passes 10x its start (as
            the engine's rule); a non-finite loss stops the run either way.

    Returns:
        A ``NotebookResult``.
    """
    each = None if on_epoch is None else (lambda epoch, params, records: on_epoch(records[0]))
    return fit_notebook_group(data, [lr], batch_size=batch_size, epochs=epochs, seed=seed, hidden=hidden,
                              replay_step=replay_step, on_epoch=each, divergence=divergence)[0]


# ---------------------------------------------------------------- several lrs at once


@jax.jit
def _group_batches(params, x: jax.Array, y: jax.Array, idx: jax.Array, lrs: jax.Array):
    """``_full_batches`` vmapped over the members (params with a leading (K,) axis, lrs (K,)); returns
    (params, losses (K, steps, 2)).

    Inside the scan the first layer's W is kept as (D, K, H1), members on its middle axis: the members share
    their input minibatch, so its forward and gradient dots are one (B, D) by (D, K * H1) product and need no
    transposes of the widest array every step (members first cost ~10% more on a CPU). Same bits either way.
    """
    axes = [{"W": 1, "b": 0}] + [{"W": 0, "b": 0}] * (len(params) - 1)
    step = jax.vmap(_step, in_axes=(axes, None, None, 0), out_axes=(axes, 0))
    carry = [{"W": jnp.moveaxis(params[0]["W"], 0, 1), "b": params[0]["b"]}, *params[1:]]
    carry, losses = jax.lax.scan(lambda c, batch: step(c, x[batch], y[batch], lrs), carry, idx)
    return [{"W": jnp.moveaxis(carry[0]["W"], 1, 0), "b": carry[0]["b"]}, *carry[1:]], jnp.moveaxis(losses, 0, 1)


_group_step = jax.jit(jax.vmap(_step, in_axes=(0, None, None, 0)))


def _group_epoch(params, x: jax.Array, y: jax.Array, perm: np.ndarray, lrs: jax.Array, batch_size: int):
    """``_epoch`` for K members at once: params with a leading (K,) axis, lrs (K,); returns the params,
    the K notebook epoch losses and the (K, steps) standard cross-entropies."""
    n = x.shape[0]
    num_full = n // batch_size
    head = jnp.asarray(perm[: num_full * batch_size].reshape(num_full, batch_size))
    params, losses = _group_batches(params, x, y, head, lrs)
    losses = np.asarray(losses).reshape(len(lrs), -1, 2)
    if n % batch_size:
        tail = jnp.asarray(perm[num_full * batch_size:])
        params, last = _group_step(params, x[tail], y[tail], lrs)
        losses = np.concatenate([losses, np.asarray(last)[:, None]], axis=1)
    return params, np.sum(losses[:, :, 0], axis=1) / max(num_full, 1), losses[:, :, 1]


def _member(params, k: int):
    return jax.tree_util.tree_map(lambda p: p[k], params)


def fit_notebook_group(data, lrs: Sequence[float], *, batch_size: int = 32, epochs: int = 10, seed: int = 42,
                       hidden=(128, 64), replay_step: bool = False, on_epoch: Callable | None = None,
                       divergence: bool = True) -> list[NotebookResult]:
    """``fit_notebook`` for several learning rates at once, one result per lr.

    The notebook's stream (``np.random.seed``, the init, one permutation per epoch) depends on the seed
    and the shapes only, so runs that differ only in lr start from the same params and see the same
    minibatches: they train as one program vmapped over lr. One lr runs the single run's compiled epoch;
    several agree with their single runs to float64 rounding (a vmapped matmul may sum in another order),
    far below the notebook's printed digits.

    Args:
        data: a ``data.Dataset`` of uint8 images and labels 0..9.
        lrs: the learning rates, one member each.
        batch_size: examples per step (the short last batch as the notebook slices it).
        epochs: passes over the training set.
        seed: the notebook's ``np.random`` seed.
        hidden: the hidden layer sizes.
        replay_step: first apply the notebook's one test update (lr 0.01, 5 images) to the shared init.
        on_epoch: ``on_epoch(epoch, params_list, records)`` after each epoch (members' params and
            ``{"epoch", "loss"}`` records); raising ``events.StopRun`` ends the runs there.
        divergence: ``fit_notebook``'s rule (an epoch's cross-entropy past 10x its start raises
            ``DivergenceError``, naming the member's lr); a non-finite loss raises either way.

    Returns:
        One ``NotebookResult`` per learning rate, in the order of ``lrs``.
    """
    if not len(lrs):
        raise ValueError("lrs: expected at least one learning rate")
    for lr in lrs:
        hidden = _check_args(data, lr, batch_size, epochs, seed, hidden)
    lrs = [float(lr) for lr in lrs]
    from .data import normalize

    with enable_x64(True):
        as_x = lambda a: normalize(np.asarray(a).reshape(len(a), -1), jnp.float64)  # noqa: E731
        x, y = as_x(data.x_train), jnp.asarray(np.asarray(data.y_train, np.int32))
        rng = np.random.RandomState(seed)
        params = init_params_numpy(rng, [x.shape[1], *hidden, 10])
        if replay_step:
            params, _ = _step(params, x[:REPLAY_IMAGES], y[:REPLAY_IMAGES], REPLAY_LR)
        if len(lrs) > 1:
            params = jax.tree_util.tree_map(lambda p: jnp.stack([p] * len(lrs)), params)
        histories: list[list] = [[] for _ in lrs]
        starts: list = [None] * len(lrs)
        for e in range(1, epochs + 1):
            params, values = _one_epoch(params, x, y, rng.permutation(x.shape[0]), lrs, batch_size, e, starts,
                                        divergence)
            for history, value in zip(histories, values):
                history.append({"epoch": e, "loss": float(value)})
            members = [params] if len(lrs) == 1 else [_member(params, k) for k in range(len(lrs))]
            try:
                if on_epoch is not None:
                    on_epoch(e, members, [h[-1] for h in histories])
            except StopRun:
                break
        x_test, y_test = as_x(data.x_test), jnp.asarray(np.asarray(data.y_test, np.int32))
        return [NotebookResult(p, h, *_test(p, x_test, y_test)) for p, h in zip(members, histories)]


def _one_epoch(params, x, y, perm, lrs: list, batch_size: int, epoch: int, starts: list, divergence: bool):
    """(params, notebook epoch losses) of one epoch of every member, each checked by ``_check_divergence``
    against its reference (``starts``: filled in epoch 1 from its first cross-entropy): DivergenceError."""
    if len(lrs) == 1:
        params, value, ce = _epoch(params, x, y, perm, lrs[0], batch_size)
        values, ces = [value], [ce]
    else:
        params, values, ces = _group_epoch(params, x, y, perm, jnp.asarray(lrs, jnp.float64), batch_size)
    for k, (lr, ce) in enumerate(zip(lrs, ces)):
        starts[k] = float(reference_loss(ce[0], math.log(10))) if starts[k] is None else starts[k]
        try:
            _check_divergence(ce, starts[k], epoch, divergence)
        except DivergenceError as err:
            raise DivergenceError(f"{err} (the lr {lr:g} run)" if len(lrs) > 1 else str(err)) from None
    return params, values
