"""The notebook's hand-derived backpropagation, for any depth, and gradient checking.

``manual_grad`` is the exact gradient of ``losses.loss`` (cross-entropy from logits), so it can be held
against ``jax.grad(loss)`` to round-off, and both against central finite differences.

ReLU at exactly 0: the notebook's derivative is the mask ``Z > 0``, i.e. 0 at the kink. ``model.relu``
uses ``jnp.where(z > 0, ...)``, whose autodiff derivative is also 0 there, so all three agree even on
inputs with exact zeros (``jnp.maximum(0, z)`` would give 0.5 at the tie and disagree).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .losses import _as_one_hot, loss
from .model import Params, forward_intermediates


def manual_grad(params: Params, x: jax.Array, y: jax.Array) -> Params:
    """Gradients of the mean cross-entropy by hand, with the params' structure.

    x (m, D); y int (m,) or one-hot (m, C). The recurrences are the notebook's:
    dZ_L = softmax - Y; dW = A_prev^T dZ / m; db = sum(dZ) / m; dA_prev = dZ W^T; dZ_prev = dA_prev * [Z_prev > 0].
    """
    cache = forward_intermediates(params, x)
    L = len(params)
    m = x.shape[0]
    Y = _as_one_hot(y, params[-1]["W"].shape[1], cache[f"A{L}"].dtype)
    grads: list[Any] = [None] * L  # every entry is set below, last layer first
    dZ = cache[f"A{L}"] - Y
    for i in range(L, 0, -1):
        A_prev = cache[f"A{i - 1}"]
        grads[i - 1] = {"W": A_prev.T @ dZ / m, "b": jnp.sum(dZ, axis=0) / m}
        if i > 1:
            dA = dZ @ params[i - 1]["W"].T
            dZ = dA * (cache[f"Z{i - 1}"] > 0)
    return grads


def autodiff_grad(params: Params, x: jax.Array, y: jax.Array) -> Params:
    """``jax.grad(loss)``: the same gradient by reverse-mode autodiff."""
    return jax.grad(loss)(params, x, y)


def finite_difference_grad(f: Callable[[Params], jax.Array], params: Params, eps: float = 1e-4,
                           max_coords: int | None = None, seed: int = 0) -> tuple[Params, Params]:
    """Central differences ``(f(p + eps e_i) - f(p - eps e_i)) / (2 eps)``, coordinate by coordinate.

    Checking every coordinate of a 784x128 matrix costs 2 forward passes each, so ``max_coords`` picks at
    most that many coordinates per leaf at random (``seed``). Returns ``(estimates, mask)`` PyTrees shaped
    like params; ``mask`` is True where a coordinate was estimated (elsewhere the estimate is 0).
    Works in the params' dtype, so run it in float64.
    """
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    f_jit = jax.jit(lambda ls: f(jax.tree_util.tree_unflatten(treedef, ls)))
    estimates, masks = [], []
    for li, leaf in enumerate(leaves):
        flat = np.asarray(leaf).ravel()
        n = flat.size
        idx = np.arange(n) if max_coords is None or n <= max_coords else rng.choice(n, max_coords, replace=False)
        est = np.zeros(n, dtype=flat.dtype)
        mask = np.zeros(n, dtype=bool)
        for j in idx:
            up, down = _shifted(f_jit, leaves, li, flat, j, eps), _shifted(f_jit, leaves, li, flat, j, -eps)
            est[j] = (up - down) / (2 * eps)
            mask[j] = True
        estimates.append(est.reshape(leaf.shape))
        masks.append(mask.reshape(leaf.shape))
    return jax.tree_util.tree_unflatten(treedef, estimates), jax.tree_util.tree_unflatten(treedef, masks)


def _shifted(f_jit: Callable, leaves: list, li: int, flat: np.ndarray, j: int, delta: float) -> float:
    """``f_jit(leaves)`` with coordinate ``j`` of leaf ``li`` (raveled values ``flat``) moved by ``delta``."""
    leaf = leaves[li]
    v = flat.copy()
    v[j] += delta
    ls = list(leaves)
    ls[li] = jnp.asarray(v.reshape(leaf.shape), leaf.dtype)
    return float(f_jit(ls))


def max_relative_error(a, b, mask=None, floor: float = 1e-12) -> float:
    """``max |a - b| / max(|a|, |b|, floor)`` over the entries (optionally only where ``mask``)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    err = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    if mask is not None:
        err = err[np.asarray(mask)]
    return float(err.max()) if err.size else 0.0


class GradCheckRow(NamedTuple):
    name: str          # "W1", "b1", ...
    shape: tuple
    manual_vs_autodiff: float
    manual_vs_fd: float
    autodiff_vs_fd: float


def gradcheck(params: Params, x: jax.Array, y: jax.Array, eps: float = 1e-4, max_coords: int = 20,
              seed: int = 0) -> list[GradCheckRow]:
    """Compare manual backprop, ``jax.grad`` and central finite differences, per parameter.

    Call it with float64 params and inputs (enable x64): in float32 the finite differences are
    dominated by round-off. Returns one row per parameter with the max relative errors; finite
    differences are evaluated on ``max_coords`` random coordinates of each parameter.
    """
    # Jitted: eager float64 dispatch of every primitive costs seconds on a 784x128 layer.
    manual = jax.jit(manual_grad)(params, x, y)
    auto = jax.jit(autodiff_grad)(params, x, y)
    fd, mask = finite_difference_grad(lambda p: loss(p, x, y), params, eps=eps, max_coords=max_coords, seed=seed)
    # Central differences err by O(eps^2 f''') (truncation) plus O(ulp(f) / eps) (round-off): with
    # eps = 1e-4 and a loss near 2.3 in float64 that is ~1e-9 relative and ~5e-12 absolute. Gradients
    # below the floor are compared in absolute terms so near-zero entries can't inflate the ratio.
    floor = 1e-8
    rows = []
    for i in range(len(params)):
        for name in ("W", "b"):
            m, a, d, k = manual[i][name], auto[i][name], fd[i][name], mask[i][name]
            rows.append(GradCheckRow(
                f"{name}{i + 1}", tuple(params[i][name].shape),
                max_relative_error(m, a),
                max_relative_error(m, d, k, floor), max_relative_error(a, d, k, floor)))
    return rows
