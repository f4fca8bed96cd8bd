"""The notebook's hand-derived backpropagation, for any depth, and gradient checking.

``manual_grad`` is the exact gradient of ``losses.loss`` (cross-entropy from logits, plus the L2 term and
dropout when asked) for every named activation, so it can be held against ``jax.grad(loss)`` to
round-off, and both against central finite differences.

ReLU at exactly 0: the notebook's derivative is the mask ``Z > 0``, i.e. 0 at the kink. ``model.relu``
uses ``jnp.where(z > 0, ...)``, whose autodiff derivative is also 0 there, so manual and autodiff agree
even on inputs with exact zeros (``jnp.maximum(0, z)`` would give 0.5 at the tie and disagree). Finite
differences have no derivative to agree on there: ``gradcheck`` finds the coordinates whose step
crosses such a kink, re-steps them and skips those it cannot resolve, and says how many.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import activations
from .losses import _as_one_hot, _is_zero, check_labels, loss
from .model import (
    Params,
    activation_fn,
    check_inputs,
    dropout_mask,
    forward_intermediates,
    inverted_dropout,
    softmax,
)

# gradcheck's tolerances. A hand-written gradient and jax.grad compute the same expression in another
# order, so they agree to round-off: AGREE_RTOL relative to the leaf's largest entry. Central
# differences with eps = 1e-4 err by ~eps^2 f''' (truncation, ~1e-9 relative here) plus the loss's
# round-off over the step: FD_NOISE_ULPS ulps of the loss, over the step, is the absolute error
# allowed on top of FD_RTOL relative. A real mistake (a wrong sign, a missing 1/m, a transposed
# product) is off by O(1), far beyond both.
AGREE_RTOL = 1e-10
FD_RTOL = 1e-5
FD_NOISE_ULPS = 64
# A step whose one-sided differences disagree beyond curvature is re-tried this much smaller.
RESTEP_FACTORS = (1, 10, 100)


def _derivative(activation: str, z: jax.Array) -> jax.Array:
    """The hand-derived ``activation'(z)`` for a name from ``activations.NAMES`` (ValueError otherwise)."""
    return activations.get(activation).derivative(z)


def _forward_cache(params: Params, x: jax.Array, activation: str, dropout: float, key) -> tuple[dict, dict]:
    """``forward_intermediates`` with ``model.forward``'s dropout: hidden A's are the dropped-out
    activations; also returns the keep masks ``{layer: (N, width) bool}`` (empty without dropout)."""
    if key is None or not dropout > 0:
        return forward_intermediates(params, x, activation=activation), {}
    act = activation_fn(activation)
    cache, keep, a = {"A0": x}, {}, x
    L = len(params)
    for i, layer in enumerate(params, start=1):
        z = a @ layer["W"] + layer["b"]
        if i < L:
            layer_key = jax.random.fold_in(key, i - 1)  # forward's hidden layer i - 1 (0-based)
            keep[i] = dropout_mask(layer_key, z.shape, dropout)
            a = inverted_dropout(layer_key, act(z), dropout)
        else:
            a = softmax(z)
        cache[f"Z{i}"], cache[f"A{i}"] = z, a
    return cache, keep


def manual_grad(params: Params, x: jax.Array, y: jax.Array, *, activation: str = "relu", l2=0.0,
                dropout: float = 0.0, key: jax.Array | None = None) -> Params:
    """The gradient of ``loss(params, x, y, activation=..., l2=..., dropout=..., key=...)`` by hand.

    Args:
        params: list of ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` layers; the result has its structure.
        x: inputs (m, D).
        y: int labels (m,) or one-hot (m, C).
        activation: a name from ``model.ACTIVATIONS``; a callable has no hand-derived rule (ValueError:
            use ``jax.grad``).
        l2: weight of ``l2 * l2_penalty(params)``, a number or a traced scalar; adds ``l2 * W`` to each dW.
        dropout, key: ``model.forward``'s dropout (the same masks, drawn from ``key``), only with a key.

    Returns:
        The gradient: a list of ``{"W", "b"}`` dicts shaped like ``params``.

    The recurrences are the notebook's: dZ_L = softmax - Y; dW = A_prev^T dZ / m; db = sum(dZ) / m;
    dA_prev = dZ W^T, through the dropout mask (kept units scaled by 1/(1-rate)); dZ_prev = dA_prev * act'(Z_prev).
    """
    if callable(activation):
        raise ValueError("activation: manual_grad has no hand-derived rule for a callable activation; "
                         "use jax.grad (autodiff_grad) for it")
    activation_fn(activation)  # an unknown name is refused here, not deep in the recurrence
    check_inputs(params, x)
    check_labels(y, jnp.shape(x)[0])
    cache, keep = _forward_cache(params, x, activation, dropout, key)
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
            if keep:
                dA = jnp.where(keep[i - 1], dA / (1.0 - dropout), jnp.zeros_like(dA))
            dZ = dA * _derivative(activation, cache[f"Z{i - 1}"])
    if _is_zero(l2):
        return grads  # no L2 arithmetic at all: the notebook's numbers, bit for bit
    return [{"W": g["W"] + jnp.asarray(l2, p["W"].dtype) * p["W"], "b": g["b"]} for g, p in zip(grads, params)]


def autodiff_grad(params: Params, x: jax.Array, y: jax.Array, **loss_kwargs) -> Params:
    """``jax.grad(loss)(params, x, y, **loss_kwargs)``: the same gradient by reverse-mode autodiff.

    Args:
        params: a list of ``{"W", "b"}`` layers.
        x: (m, D) inputs.
        y: (m,) integer labels or (m, C) one-hot rows.
        **loss_kwargs: ``losses.loss``'s keywords (activation, l2, dropout, key).

    Returns:
        The gradient, shaped like ``params``.
    """
    return jax.grad(loss)(params, x, y, **loss_kwargs)


# ---------------------------------------------------------------- finite differences


def _central_difference(f: Callable[[float], float], f0: float, eps: float, noise: float) -> tuple[float, int]:
    """``(f(h) - f(-h)) / 2h`` for the first ``h = eps / factor`` whose step crosses no kink.

    ``f(delta)`` is the loss with one coordinate moved by delta, ``f0 = f(0)``, ``noise`` its absolute
    round-off. Returns ``(estimate, factor)``, or ``(nan, -1)`` when every step tried crosses a kink.
    """
    for factor in RESTEP_FACTORS:
        h = eps / factor
        fm2, fm1, fp1, fp2 = (f(d * h) for d in (-2, -1, 1, 2))
        estimate = (fp1 - fm1) / (2 * h)
        # Second differences left of, around and right of the point: a smooth loss gives each h^2 f''
        # up to O(h^3 f'''), so one-sided differences may disagree only as curvature explains. A kink
        # (a ReLU input crossing 0) at distance t < h adds |jump| (h - t) to the middle one and
        # |jump| t to the right one, and moves the estimate by |jump| (h - t) / 2h <= spread / 2h.
        left, mid, right = f0 - 2 * fm1 + fm2, fp1 - 2 * f0 + fm1, fp2 - 2 * fp1 + f0
        spread = max(abs(mid - left), abs(right - left), abs(right - mid))
        if spread <= max(h * FD_RTOL * abs(estimate), noise):  # a kink's effect <= half the tolerance
            return estimate, factor
    return math.nan, -1


def _fd_leaves(f: Callable, params, eps: float, max_coords: int | None, seed: int) -> tuple[list, list, float]:
    """Central differences of ``f`` at ``params``, leaf by leaf: ``(estimates, steps, noise)``.

    ``estimates`` and ``steps`` are lists of arrays shaped like the leaves: ``steps`` holds the eps divisor
    used (1, 10 or 100), 0 where the coordinate was not sampled, -1 where it was skipped at a kink (the
    estimate is then nan). ``noise`` is the loss's absolute round-off, ``FD_NOISE_ULPS`` ulps of it.
    """
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves = [jnp.asarray(leaf) for leaf in leaves]  # Python-number leaves too
    f_jit = jax.jit(lambda ls: f(jax.tree_util.tree_unflatten(treedef, ls)))
    f0 = float(f_jit(leaves))
    dtype = np.result_type(*[np.asarray(leaf).dtype for leaf in leaves])
    noise = FD_NOISE_ULPS * float(np.finfo(dtype).eps) * max(abs(f0), float(np.finfo(dtype).tiny))
    estimates, steps = [], []
    for li, leaf in enumerate(leaves):
        flat = np.asarray(leaf).ravel()
        n = flat.size
        idx = np.arange(n) if max_coords is None or n <= max_coords else rng.choice(n, max_coords, replace=False)
        est = np.zeros(n, dtype=flat.dtype)
        step = np.zeros(n, dtype=np.int64)
        for j in idx:
            est[j], step[j] = _central_difference(functools.partial(_shifted, f_jit, leaves, li, flat, j), f0, eps,
                                                  noise)
        estimates.append(est.reshape(leaf.shape))
        steps.append(step.reshape(leaf.shape))
    return estimates, steps, noise


def finite_difference_grad(f: Callable[[Params], jax.Array], params: Params, eps: float = 1e-4,
                           max_coords: int | None = None, seed: int = 0) -> tuple[Params, Params]:
    """Central differences ``(f(p + h e_i) - f(p - h e_i)) / (2 h)`` of the scalar ``f`` at ``params``.

    Args:
        f: params -> scalar loss.
        params: any PyTree of float arrays (use float64: in float32 the differences are dominated by
            round-off).
        eps: the step h; a coordinate whose step crosses a kink (a ReLU input crossing 0) is re-stepped
            with eps/10, eps/100, and left out when every step crosses one.
        max_coords: at most this many coordinates per leaf, picked at random (``seed``); None: all.
        seed: seed of that pick.

    Returns:
        ``(estimates, mask)``, PyTrees shaped like params; ``mask`` is True where a coordinate was
        estimated (elsewhere the estimate is 0). ``gradcheck`` also reports the re-stepped and skipped
        ones.
    """
    estimates, steps, _ = _fd_leaves(f, params, eps, max_coords, seed)
    treedef = jax.tree_util.tree_structure(params)
    masks = [step > 0 for step in steps]
    estimates = [np.where(mask, est, 0) for est, mask in zip(estimates, masks)]
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
    """``max |a - b| / max(|a|, |b|, floor)`` over the entries (optionally only where ``mask``).

    Args:
        a, b: arrays of one shape, or two PyTrees of one structure (e.g. two gradients), the max then
            taken over all leaves.
        mask: None (every entry), or a bool array (a PyTree of them, for PyTrees) of the entries to
            compare.
        floor: keeps near-zero entries from inflating the ratio (below it the error is absolute / floor).

    Returns:
        The largest relative error, a Python float; 0.0 when nothing is compared. A NaN or an infinity
        in either argument (among the compared entries) makes it ``inf``: a gradient that is not finite
        never agrees with anything, itself included.
    """
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    if tree_a != tree_b:  # type: ignore[operator]
        raise ValueError(f"b: its structure {tree_b} differs from a's {tree_a}")
    masks = [None] * len(leaves_a)
    if mask is not None:
        masks, tree_m = jax.tree_util.tree_flatten(mask)
        if tree_m != tree_a:  # type: ignore[operator]
            raise ValueError(f"mask: its structure {tree_m} differs from a's {tree_a}")
    worst = 0.0
    for la, lb, lm in zip(leaves_a, leaves_b, masks):
        la, lb = np.asarray(la, dtype=np.float64), np.asarray(lb, dtype=np.float64)
        if la.shape != lb.shape:
            raise ValueError(f"b: shape {lb.shape} differs from a's {la.shape}")
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: replaced by inf below
            err = np.abs(la - lb) / np.maximum(np.maximum(np.abs(la), np.abs(lb)), floor)
        err = np.where(np.isfinite(la) & np.isfinite(lb), err, np.inf)  # Python's max would skip a NaN
        if lm is not None:
            err = err[np.broadcast_to(np.asarray(lm, dtype=bool), err.shape)]
        worst = max(worst, float(err.max()) if err.size else 0.0)
    return worst


# ---------------------------------------------------------------- gradient checks


class GradCheckRow(NamedTuple):
    """One params leaf's line of a gradient check; "manual" is ``grad_fn``'s gradient.

    Attributes:
        name: "W1", "b1", ... for a list of layers, else the leaf's key path such as ``['net']['W']``.
        shape: the leaf's shape.
        manual_vs_autodiff: max ``|diff|`` relative to the leaf's largest entry (None without grad_fn).
        manual_vs_fd: as ``autodiff_vs_fd``, for ``grad_fn``'s gradient (None without grad_fn).
        autodiff_vs_fd: the max over the checked coordinates of ``|g - fd| / max(|g|, |fd|, floor)``, the
            floor the step's round-off over FD_RTOL.
        checked: coordinates compared with finite differences.
        restepped: of those, how many were estimated with eps/10 or eps/100 (a kink inside eps).
        skipped: coordinates left out, a kink inside every step tried.
    """

    name: str
    shape: tuple
    manual_vs_autodiff: float | None
    manual_vs_fd: float | None
    autodiff_vs_fd: float
    checked: int
    restepped: int
    skipped: int


class GradCheckResult(NamedTuple):
    """``gradcheck``'s report.

    Attributes:
        rows: one ``GradCheckRow`` per params leaf.
        checked: the rows' ``checked``, summed.
        restepped: the rows' ``restepped``, summed.
        skipped: the rows' ``skipped``, summed.
        passed: every error within its tolerance (AGREE_RTOL between the analytic gradients, FD_RTOL
            against finite differences) and at least one coordinate checked.
    """

    rows: list
    checked: int
    restepped: int
    skipped: int
    passed: bool


def _leaf_name(path: tuple) -> str:
    """"W2" for ``params[1]["W"]`` of a list of layers, else the key path (``['conv']['W']``)."""
    tu = jax.tree_util
    if len(path) == 2 and isinstance(path[0], tu.SequenceKey) and isinstance(path[1], tu.DictKey):
        return f"{path[1].key}{path[0].idx + 1}"
    return jax.tree_util.keystr(path)


def _fd_error(g: np.ndarray, est: np.ndarray, steps: np.ndarray, noise: float, eps: float) -> float:
    """Worst FD error over the checked coordinates; the floor is the step's round-off over FD_RTOL."""
    ok = steps > 0
    if not ok.any():
        return 0.0
    g, est = np.asarray(g, np.float64)[ok], est[ok]
    floor = noise * steps[ok] / eps / FD_RTOL
    return float((np.abs(g - est) / np.maximum(np.maximum(np.abs(g), np.abs(est)), floor)).max())


def _leaf_error(a, b) -> float:
    """``max |a - b|`` relative to the larger of the two leaves' largest entries."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return float(np.abs(a - b).max(initial=0.0) / scale) if scale > 0 else 0.0


def _check_float64(params) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jnp.result_type(leaf) != jnp.float64:
            raise ValueError(f"params: gradcheck needs float64 leaves (in float32 finite differences are "
                             f"round-off), got {jnp.result_type(leaf)} at {jax.tree_util.keystr(path)}; "
                             f"enable x64 (jax.enable_x64) and cast")
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params: gradcheck needs at least one array leaf")


def gradcheck(loss_fn: Callable, params, *args, eps: float = 1e-4, max_coords: int | None = 20, seed: int = 0,
              grad_fn: Callable | None = None) -> GradCheckResult:
    """Check ``jax.grad(loss_fn)`` (and ``grad_fn``, when given) against central finite differences.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``; args: its other arguments (held fixed).
        params: any PyTree of float64 arrays (ValueError otherwise: float32 differences are round-off).
        eps: finite-difference step; a coordinate whose step crosses a kink is re-stepped with eps/10 and
            eps/100, and skipped when all three cross one (counted, never reported as a failure).
        max_coords: finite-difference coordinates per leaf, picked at random (``seed``); None: all.
        seed: seed of that pick.
        grad_fn: optional ``grad_fn(params, *args) -> grads`` (e.g. a hand-written gradient), held
            against jax.grad (AGREE_RTOL) and the finite differences (FD_RTOL).

    Returns:
        A ``GradCheckResult``: one ``GradCheckRow`` per leaf, totals and ``passed``.
    """
    _check_float64(params)
    out = jax.eval_shape(loss_fn, params, *args)
    if getattr(out, "shape", None) != ():
        raise ValueError(f"loss_fn: must return a scalar, got {getattr(out, 'shape', type(out).__name__)}")
    # Jitted: eager float64 dispatch of every primitive costs seconds on a 784x128 layer.
    auto = jax.jit(lambda p: jax.grad(loss_fn)(p, *args))(params)
    manual = None if grad_fn is None else jax.jit(lambda p: grad_fn(p, *args))(params)
    if manual is not None and jax.tree_util.tree_structure(manual) != jax.tree_util.tree_structure(params):  # type: ignore[operator]
        raise ValueError("grad_fn: its gradient's structure differs from params'")
    estimates, steps_per_leaf, noise = _fd_leaves(lambda p: loss_fn(p, *args), params, eps, max_coords, seed)
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    manual_leaves = [None] * len(paths) if manual is None else jax.tree_util.tree_leaves(manual)
    rows = []
    for path, a, m, est, steps in zip(paths, jax.tree_util.tree_leaves(auto), manual_leaves, estimates,
                                      steps_per_leaf):
        rows.append(GradCheckRow(
            _leaf_name(path), tuple(np.shape(a)),
            None if m is None else _leaf_error(m, a),
            None if m is None else _fd_error(m, est, steps, noise, eps),
            _fd_error(a, est, steps, noise, eps),
            int((steps > 0).sum()), int((steps > 1).sum()), int((steps < 0).sum())))
    return _result(rows)


def _result(rows: list) -> GradCheckResult:
    checked = sum(r.checked for r in rows)
    passed = checked > 0 and all(
        r.autodiff_vs_fd <= FD_RTOL and (r.manual_vs_fd is None or r.manual_vs_fd <= FD_RTOL)
        and (r.manual_vs_autodiff is None or r.manual_vs_autodiff <= AGREE_RTOL) for r in rows)
    return GradCheckResult(rows, checked, sum(r.restepped for r in rows), sum(r.skipped for r in rows), passed)


def gradcheck_mlp(params: Params, x: jax.Array, y: jax.Array, *, activation: str = "relu", l2=0.0,
                  dropout: float = 0.0, key: jax.Array | None = None, eps: float = 1e-4,
                  max_coords: int | None = 20, seed: int = 0) -> GradCheckResult:
    """The three-way check of the MLP: ``manual_grad`` vs ``jax.grad(loss)`` vs finite differences.

    Args:
        params: float64 list of ``{"W", "b"}`` layers; rows are named W1, b1, W2, ...
        x: inputs (m, D) float64.
        y: int labels (m,) or one-hot (m, C).
        activation, l2, dropout, key: ``losses.loss``'s (dropout uses the same masks in all three).
        eps, max_coords, seed: ``gradcheck``'s.

    Returns:
        A ``GradCheckResult``, its rows named W1, b1, W2, ...
    """
    kwargs = {"activation": activation, "l2": l2, "dropout": dropout, "key": key}
    return gradcheck(functools.partial(loss, **kwargs), params, x, y, eps=eps, max_coords=max_coords, seed=seed,
                     grad_fn=functools.partial(manual_grad, **kwargs))
