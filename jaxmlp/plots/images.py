"""Pictures made of images: the confusion matrix, misclassified digits, first-layer weights and a digit
under each augmentation."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .canvas import _new_figure, _save

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure


# ----------------------------------------------------------------------------- confusion matrix


def confusion_matrix(labels: ArrayLike, preds: ArrayLike, num_classes: int) -> np.ndarray:
    """True labels against predictions.

    Args:
        labels: (N,) int true classes.
        preds: (N,) int predicted classes.
        num_classes: the matrix's side.

    Returns:
        (num_classes, num_classes) int64 counts: entry [t, p] = how many of class t were predicted p.
    """
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(preds).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"confusion_matrix: {labels.size} labels but {preds.size} predictions")
    if labels.size and not (np.issubdtype(labels.dtype, np.integer) and np.issubdtype(preds.dtype, np.integer)):
        raise ValueError("confusion_matrix: labels and preds must be integer class indices")
    for name, a in (("labels", labels), ("preds", preds)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} must lie in [0, {num_classes}), got {a.min()}..{a.max()}")
    flat = labels.astype(np.int64) * num_classes + preds.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _num_classes(class_names: Sequence[str] | None, *arrays: np.ndarray) -> int:
    if class_names is not None:
        return len(class_names)
    top = max((int(np.max(a)) for a in arrays if np.size(a)), default=0)
    return max(top + 1, 2)


def plot_confusion(labels: ArrayLike, preds: ArrayLike, path: str | os.PathLike,
                   class_names: Sequence[str] | None = None, *, num_classes: int | None = None) -> Path:
    """Confusion matrix of ``labels`` against ``preds`` (rows true class, columns predicted) with every
    count written in its cell.

    Args:
        labels: (N,) int true classes.
        preds: (N,) int predicted classes.
        path: the PNG to write.
        class_names: the axes' labels (default: the class indices).
        num_classes: the matrix's side; None: the count of ``class_names``, else the largest label or
            prediction + 1.

    Returns:
        The PNG's path.
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    if num_classes is None:
        num_classes = _num_classes(class_names, labels, preds)
    cm = confusion_matrix(labels, preds, num_classes)
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"plot_confusion: {len(names)} class names for {num_classes} classes")

    side = max(4.5, 0.55 * num_classes + 2)
    fig = _new_figure((side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    # Dark text on light cells and white text on dark ones keeps every count readable.
    threshold = cm.max() / 2 if cm.size else 0
    fontsize = 9 if num_classes <= 12 else 6
    for t in range(num_classes):
        for p in range(num_classes):
            ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=fontsize,
                    color="white" if cm[t, p] > threshold else "black")
    ax.set_xticks(range(num_classes), names)
    ax.set_yticks(range(num_classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"Confusion matrix (n={total}, accuracy {acc:.2%})")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- image grids


def _as_images(images: ArrayLike) -> np.ndarray:
    """(N, H, W) from (N, H, W) or (N, H*W) with a square H*W (784 -> 28x28)."""
    images = np.asarray(images)
    if images.ndim == 3:
        return images
    if images.ndim == 2:
        side = math.isqrt(images.shape[1])
        if side * side == images.shape[1]:
            return images.reshape(images.shape[0], side, side)
    raise ValueError(f"images must be (N, 784)-like with a square pixel count or (N, H, W), got {images.shape}")


def misclassified_indices(labels: ArrayLike, preds: ArrayLike, max_images: int | None = None) -> np.ndarray:
    """Where the predictions are wrong.

    Args:
        labels: (N,) int true classes.
        preds: (N,) int predicted classes.
        max_images: the most indices returned (None: all).

    Returns:
        The indices, in order, where preds != labels.
    """
    labels, preds = np.asarray(labels).reshape(-1), np.asarray(preds).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions")
    wrong = np.flatnonzero(labels != preds)
    return wrong if max_images is None else wrong[:max_images]


def _grid(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _mosaic(tiles: np.ndarray, cols: int, gap: int, top: int) -> np.ndarray:
    """Tiles (n, h, w) laid out row by row in one float array, NaN in the gaps.

    One image with text labels draws many times faster than one matplotlib axes per tile.
    """
    n, h, w = tiles.shape
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gap + top) - gap, cols * (w + gap) - gap), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        y0, x0 = r * (h + gap + top) + top, c * (w + gap)
        out[y0:y0 + h, x0:x0 + w] = tiles[k]
    return out


def _cmap(name: str, bad: str) -> Colormap:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad=bad)


def _message_figure(text: str, path: str | os.PathLike) -> Path:
    fig = _new_figure((5, 2))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=13)
    return _save(fig, path)


def plot_misclassified(images: ArrayLike, labels: ArrayLike, preds: ArrayLike, path: str | os.PathLike,
                       max_images: int = 36, class_names: Sequence[str] | None = None) -> Path:
    """Grid of the first max_images misclassified digits, each titled "pred P / true T".

    Args:
        images: (N, 784) or (N, 28, 28) in any value range (each is scaled to its own min..max).
        labels: (N,) int true classes.
        preds: (N,) int predicted classes.
        path: the PNG to write; with nothing misclassified it says so instead.
        max_images: the most digits drawn.
        class_names: the names used in the titles (default: the indices).

    Returns:
        The PNG's path.
    """
    images = _as_images(images)
    labels, preds = np.asarray(labels).reshape(-1), np.asarray(preds).reshape(-1)
    if not (images.shape[0] == labels.size == preds.size):
        raise ValueError(f"plot_misclassified: {images.shape[0]} images, {labels.size} labels, "
                         f"{preds.size} predictions")
    idx = misclassified_indices(labels, preds, max_images)
    total_wrong = int(np.sum(labels != preds))
    if idx.size == 0:
        return _message_figure(f"No misclassified images (out of {labels.size})", path)

    def name(c: int) -> str:
        return str(class_names[int(c)]) if class_names is not None else str(int(c))

    tiles = images[idx].astype(np.float64)
    lo = tiles.min(axis=(1, 2), keepdims=True)
    span = tiles.max(axis=(1, 2), keepdims=True) - lo
    tiles = (tiles - lo) / np.where(span > 0, span, 1.0)
    h, w = tiles.shape[1:]
    gap, top = max(2, w // 7), max(6, h // 3)
    rows, cols = _grid(idx.size)
    fig = _new_figure((1.55 * cols, 1.7 * rows + 0.4))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98 - 0.4 / (1.7 * rows + 0.4)))
    ax.imshow(_mosaic(tiles, cols, gap, top), cmap=_cmap("gray", "white"), vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.axis("off")
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        ax.text(c * (w + gap) + w / 2, r * (h + gap + top) + top - 1.5,
                f"pred {name(preds[i])} / true {name(labels[i])}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"Misclassified: showing {idx.size} of {total_wrong} (out of {labels.size})")
    return _save(fig, path)


def plot_first_layer(W1: ArrayLike, path: str | os.PathLike, max_units: int = 64) -> Path:
    """First-layer weights as one picture per unit. Each unit is scaled by its own largest absolute
    weight: red positive, blue negative, white zero.

    Args:
        W1: an MLP's (784, H) first layer (one 28x28 picture per hidden unit), or a CNN's first
            convolution (kh, kw, 1, F) (one kh x kw picture per filter).
        path: the PNG to write.
        max_units: the most units drawn (the first ones).

    Returns:
        The PNG's path.
    """
    W1 = np.asarray(W1, dtype=np.float64)
    what = "hidden units"
    if W1.ndim == 4 and W1.shape[2] == 1:  # a convolution's kernels on one input channel
        W1, what = W1.reshape(-1, W1.shape[3]), "filters"
    if W1.ndim != 2:
        raise ValueError(f"plot_first_layer: W1 must be (fan_in, fan_out) or (kh, kw, 1, filters), got shape "
                         f"{W1.shape}")
    side = math.isqrt(W1.shape[0])
    if side * side != W1.shape[0]:
        raise ValueError(f"plot_first_layer: fan_in {W1.shape[0]} is not a square image size")
    n = min(W1.shape[1], max_units)
    if n < 1:
        raise ValueError("plot_first_layer: no hidden units to show")
    tiles = W1[:, :n].T.reshape(n, side, side)
    scale = np.max(np.abs(tiles), axis=(1, 2), keepdims=True)
    tiles = tiles / np.where(scale > 0, scale, 1.0)
    rows, cols = _grid(n)
    fig = _new_figure((1.2 * cols, 1.2 * rows + 0.5))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98 - 0.5 / (1.2 * rows + 0.5)))
    ax.imshow(_mosaic(tiles, cols, gap=max(2, side // 7), top=0), cmap=_cmap("RdBu_r", "0.85"),
              vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"First-layer weights: {n} of {W1.shape[1]} {what}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- augmentation


def augmentation_figure(image: ArrayLike, rows: Sequence[tuple[str, ArrayLike]]) -> Figure:
    """One row per augmentation: the original digit, then that augmentation's variants of it.

    Args:
        image: one image, (H, W) or (H*W,) with a square pixel count, values in [0, 1].
        rows: (name, variants) pairs; variants (K, H, W) or (K, H*W), the same K in every row.

    Returns:
        The matplotlib Figure.
    """
    original = _as_images(np.asarray(image, np.float64).reshape(1, -1))[0]
    named = [(name, _as_images(np.asarray(v, np.float64).reshape(len(v), -1))) for name, v in rows]  # type: ignore[arg-type]
    if not named:
        raise ValueError("augmentation_figure: no rows to draw")
    k = max(len(v) for _, v in named)
    fig = _new_figure((1.0 * (k + 1), 1.15 * len(named) + 0.2))
    axes = fig.subplots(len(named), k + 1, squeeze=False)
    for r, (name, variants) in enumerate(named):
        axes[r, 0].imshow(original, cmap="gray_r", vmin=0.0, vmax=1.0)
        axes[r, 0].set_title("original", fontsize=8)
        for j in range(k):
            if j < len(variants):
                axes[r, j + 1].imshow(variants[j], cmap="gray_r", vmin=0.0, vmax=1.0)
        axes[r, 1].set_title(name, fontsize=8, loc="left")
    for ax in axes.flat:  # keep the frame: it shows where the image edges are
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_augmentations(image: ArrayLike, path: str | os.PathLike, *, copies: int = 8, seed: int = 0,
                       elastic_sigma: float = 4.0, elastic_alpha: float = 34.0) -> Path:
    """``copies`` variants of one digit under each of ``--augment shift``, ``affine`` and ``elastic`` (their
    defaults; elastic with ``elastic_sigma`` and ``elastic_alpha``), drawn by ``jaxmlp.augment``, as a PNG.

    Args:
        image: one image, (28, 28) or (784,), values in [0, 1].
        path: the PNG to write.
        copies: variants per row.
        seed: the PRNG seed of the draws.
        elastic_sigma: the elastic fields' smoothing in pixels.
        elastic_alpha: the elastic fields' scale in pixels.

    Returns:
        The PNG's path.
    """
    import jax
    import jax.numpy as jnp

    from .. import augment

    flat = np.asarray(image, np.float32).reshape(1, -1)
    batch = jnp.asarray(np.repeat(flat, copies, axis=0))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    rows = [("random_shift", augment.random_shift(k1, batch)), ("random_affine", augment.random_affine(k2, batch)),
            (f"random_elastic (sigma {elastic_sigma:g}, alpha {elastic_alpha:g})",
             augment.random_elastic(k3, batch, elastic_sigma, elastic_alpha))]
    return _save(augmentation_figure(flat[0], rows), path)
