"""PNG pictures of a run: learning curves, confusion matrix, misclassified digits, first-layer
weights and sweep results.

matplotlib is an optional extra (``pip install 'jaxmlp[plots]'``) imported only inside these
functions. Figures are drawn with ``matplotlib.figure.Figure`` on an Agg canvas, so no display is
needed and pyplot's global state is never touched. Inputs are plain NumPy arrays / lists.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

PLOTS_EXTRA_HINT = "matplotlib is needed for plots: pip install 'jaxmlp[plots]'"


class PlotsUnavailableError(ImportError):
    """matplotlib is not installed."""


def _new_figure(figsize: tuple[float, float]) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotsUnavailableError(PLOTS_EXTRA_HINT) from e
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------- learning curves

# (history key, legend label) in drawing order; the train loss is the mean over the epoch's minibatches,
# the others are measured on the whole split after the epoch.
_LOSS_SERIES = (("loss", "train (mean over the epoch's batches)"), ("val_loss", "validation"), ("test_loss", "test"))
_ACCURACY_SERIES = (("val_accuracy", "validation"), ("test_accuracy", "test"), ("train_accuracy", "train"))
# One colour per split in both panels.
_SPLIT_COLORS = {"loss": "C0", "train_accuracy": "C0", "val_loss": "C1", "val_accuracy": "C1",
                 "test_loss": "C2", "test_accuracy": "C2"}


def _integer_epochs(ax: Axes, epochs: list[float]) -> None:
    """Whole-epoch ticks only (no 2.5), with a margin so a one-epoch run is not a zero-width axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    lo, hi = min(epochs), max(epochs)
    pad = max(0.5, 0.04 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("epoch")


def curves_figure(history: Sequence[dict], *, test_loss: float | None = None,
                  test_accuracy: float | None = None) -> Figure:
    """The matplotlib Figure that plot_curves saves for ``history``, ``test_loss`` and ``test_accuracy``
    (see there); tests inspect its axes."""
    if not history:
        raise ValueError("plot_curves: history is empty")
    if any("epoch" not in h or "loss" not in h for h in history):
        raise ValueError("plot_curves: every history entry needs 'epoch' and 'loss'")

    def series(name: str) -> tuple[list[float], list[float]]:
        pts = [(float(h["epoch"]), float(h[name])) for h in history if h.get(name) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    epochs = [float(h["epoch"]) for h in history]
    last = max(epochs)
    # The run's final test numbers, when given and not already in the history, are one point at the end.
    finals: dict[str, float] = {k: v for k, v in (("test_loss", test_loss), ("test_accuracy", test_accuracy))
                                if v is not None and not series(k)[0]}
    acc_series = [(k, label) for k, label in _ACCURACY_SERIES if series(k)[0] or k in finals]
    fig = _new_figure((11, 4) if acc_series else (6, 4))
    axes = fig.subplots(1, 2 if acc_series else 1, squeeze=False)[0]

    def draw(ax: Axes, keys: list[tuple[str, str]], percent: bool) -> None:
        for name, label in keys:
            x, y = series(name)
            color = _SPLIT_COLORS[name]
            if name in finals:
                value = finals[name]
                ax.plot([last], [value], marker="*", markersize=13, linestyle="none", color=color,
                        label=f"{label} (end of training)")
                ax.annotate(f"{value:.2%}" if percent else f"{value:.4f}", (last, value), color=color,
                            textcoords="offset points", xytext=(-8, 8), ha="right")
            elif x:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, color=color, label=label)
        if percent:
            from matplotlib.ticker import PercentFormatter

            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            lo, hi = ax.get_ylim()  # no room above 100% or below 0%
            ax.set_ylim(max(lo, -0.005), min(hi, 1.005))
        _integer_epochs(ax, epochs)
        ax.grid(alpha=0.3)
        ax.legend()

    ax = axes[0]
    draw(ax, [(k, label) for k, label in _LOSS_SERIES if series(k)[0] or k in finals], percent=False)
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Loss")
    if acc_series:
        ax = axes[1]
        draw(ax, acc_series, percent=True)
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy")
    fig.tight_layout()
    return fig


def plot_curves(history: Sequence[dict], path: str | os.PathLike, *, test_loss: float | None = None,
                test_accuracy: float | None = None) -> Path:
    """Loss against epoch, beside accuracy against epoch when there is any; whole-epoch ticks.

    history: one dict per epoch with "epoch" and "loss" (the mean training loss over that epoch's
    minibatches), optionally "val_loss", "test_loss", "val_accuracy", "test_accuracy",
    "train_accuracy" (fractions); keys missing from some epochs are simply not drawn there.
    test_loss, test_accuracy: the run's final test numbers (e.g. FitResult's), drawn as one star at
    the last epoch unless the history already has that series. Returns the PNG's path.
    """
    return _save(curves_figure(history, test_loss=test_loss, test_accuracy=test_accuracy), path)


# ----------------------------------------------------------------------------- confusion matrix


def confusion_matrix(labels: ArrayLike, preds: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes) int64 of true ``labels`` (N,) against predictions ``preds`` (N,):
    entry [t, p] = how many of class t were predicted p."""
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
    """Confusion matrix of ``labels`` against ``preds`` (both (N,) ints; rows true class, columns
    predicted) with every count written in its cell, saved as a PNG at ``path``. ``class_names`` label
    the axes (default: the class indices); ``num_classes`` defaults to their count, else to the largest
    label or prediction + 1."""
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
    """Indices (in order) where preds != labels, at most max_images of them."""
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

    images: (N, 784) or (N, 28, 28) in any value range (each is scaled to its own min..max);
    labels, preds: (N,) ints; class_names: the names used in the titles (default: the indices). The
    PNG is saved at ``path``; with nothing misclassified it says so instead.
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
    """First-layer weights W1 (784, H) as one 28x28 picture per hidden unit (first max_units units), or a
    CNN's first convolution (kh, kw, 1, F) as one kh x kw picture per filter. Written to path.

    Each unit is scaled by its own largest absolute weight: red positive, blue negative, white zero.
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


# ----------------------------------------------------------------------------- sweeps


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def varying_hyperparameters(runs: Sequence[dict]) -> list[str]:
    """Config keys whose value differs between runs, most informative x-axis candidate first.

    Numeric keys with more distinct values come first; "seed" last (repeats, not a knob).
    """
    keys: list[str] = []
    for run in runs:
        for k in run.get("config", {}):
            if k not in keys:
                keys.append(k)
    varying = []
    for k in keys:
        values = {_hashable(run.get("config", {}).get(k)) for run in runs}
        if len(values) > 1:
            varying.append((k, values))

    def rank(item: tuple[str, set]) -> tuple[bool, bool, int, int]:
        k, values = item
        numeric = all(_is_number(v) for v in values)
        return (k == "seed", not numeric, -len(values), keys.index(k))

    return [k for k, _ in sorted(varying, key=rank)]


def _is_lr(name: str) -> bool:
    return name in ("lr", "learning_rate") or name.endswith("_lr")


def _axis_values(values: list) -> tuple[list, list[float], list[str] | None]:
    """Distinct values in order, their x positions and tick labels (None for a numeric axis)."""
    distinct = list(dict.fromkeys(values))
    if all(_is_number(v) for v in distinct):
        distinct.sort()
        return distinct, [float(v) for v in distinct], None
    distinct.sort(key=str)
    return distinct, [float(i) for i in range(len(distinct))], [str(v) for v in distinct]


def _sweep_caption(lines: str, counts: list[int]) -> str:
    """What the lines of a sweep plot are, given how many runs each of their points averages."""
    lo, hi = min(counts), max(counts)
    if hi == 1:
        return f"{lines}: test accuracy of the one run at each point"
    runs = str(lo) if lo == hi else f"{lo}-{hi}"
    return f"{lines}: mean test accuracy of the {runs} runs at each point; dots: single runs"


def _sweep_value(run: dict, k: str) -> Any:
    return _hashable(run.get("config", {}).get(k))


def _draw_sweep_axis(ax: Axes, runs: Sequence[dict], acc: np.ndarray, xkey: str,
                     group_key: str | None = None) -> list[int]:
    """Lines (the mean accuracy at each value of ``xkey``, one per value of ``group_key``) and dots
    (every run) on ``ax``; returns how many runs each point of the lines averages."""
    from matplotlib.ticker import PercentFormatter

    xs = [_sweep_value(r, xkey) for r in runs]
    distinct, pos, ticks = _axis_values(xs)
    where = {v: p for v, p in zip(distinct, pos)}
    groups = [None] if group_key is None else _axis_values([_sweep_value(r, group_key) for r in runs])[0]
    counts = []
    for g in groups:
        sel = [i for i, r in enumerate(runs) if group_key is None or _sweep_value(r, group_key) == g]
        px = [where[xs[i]] for i in sel]
        # Mean over the runs sharing an x (seeds, or the other settings when pooled) as a line;
        # every run as a faint dot.
        line_x = sorted(set(px))
        members = [[acc[i] for i in sel if where[xs[i]] == x] for x in line_x]
        counts += [len(m) for m in members]
        repeats = max(len(m) for m in members) > 1
        label = f"{group_key}={g}" if group_key is not None else (
            f"mean of the runs at each {xkey}" if repeats else f"one run at each {xkey}")
        (line,) = ax.plot(line_x, [float(np.mean(m)) for m in members], marker="o", label=label)
        ax.scatter(px, acc[sel], s=18, alpha=0.4, color=line.get_color(),
                   label="single runs" if group_key is None and repeats else None)
    if ticks is None and _is_lr(xkey) and min(pos) > 0:
        ax.set_xscale("log")
        ax.minorticks_off()
    if ticks is None and len(distinct) <= 8:
        # Few swept values: label exactly those, not matplotlib's round numbers in between.
        ticks = [f"{v:g}" for v in distinct]
    if ticks is not None:
        ax.set_xticks(pos, ticks)
    if not all(_is_number(v) for v in distinct):
        ax.set_xlim(-0.5, len(distinct) - 0.5)
    ax.set_xlabel(xkey)
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return counts


def sweep_figure(runs: Sequence[dict]) -> Figure:
    """The matplotlib Figure that plot_sweep saves for ``runs`` (see there); tests inspect its axes."""
    runs = [r for r in runs if r.get("test_accuracy") is not None]
    if not runs:
        raise ValueError("plot_sweep: no runs with a test_accuracy")
    from matplotlib.ticker import PercentFormatter

    acc = np.array([float(r["test_accuracy"]) for r in runs])
    varying = varying_hyperparameters(runs)
    if len(varying) > 1 and "seed" in varying:
        # Seeds are repeats, not a knob: the dots at each x show their spread, the line their mean.
        varying.remove("seed")
    if not varying:
        fig = _new_figure((5, 4))
        ax = fig.subplots()
        ax.scatter(np.arange(len(runs)), acc)
        ax.set_xlabel("run")
        ax.set_ylabel("test accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title("Sweep (no hyperparameter varies): each dot one run", fontsize=10)
    elif len(varying) <= 2:
        fig = _new_figure((7.5, 4.8))
        ax = fig.subplots()
        counts = _draw_sweep_axis(ax, runs, acc, varying[0], varying[1] if len(varying) == 2 else None)
        lines = "line" if len(varying) == 1 else f"one line per {varying[1]}"
        ax.set_title(f"Sweep: test accuracy vs {' and '.join(varying)} ({len(runs)} runs)\n"
                     + _sweep_caption(lines, counts), fontsize=10)
    else:
        fig = _new_figure((4.5 * len(varying), 4.3))
        axes = fig.subplots(1, len(varying), squeeze=False)[0]
        counts = []
        for ax, k in zip(axes, varying):
            counts += _draw_sweep_axis(ax, runs, acc, k)
        fig.suptitle(f"Sweep: test accuracy vs each hyperparameter ({len(runs)} runs)\n"
                     + _sweep_caption("each panel's line (the other settings pooled)", counts), fontsize=10)
    fig.tight_layout()
    return fig


def plot_sweep(runs: Sequence[dict], path: str | os.PathLike) -> Path:
    """Test accuracy against each swept hyperparameter; returns the PNG's path.

    runs: [{"config": {...}, "test_accuracy": float}, ...]. One varying key: the mean test accuracy
    of the runs at each value as a line, every run as a dot. Two: one such line per value of the
    second key. More: one panel per key, each line pooling all runs with that value. A varying
    "seed" is averaged over when other keys vary too. Learning rates use a log x-axis; non-numeric
    values are categories. The title says what the lines are and how many runs each point averages.
    """
    return _save(sweep_figure(runs), path)


# ----------------------------------------------------------------------------- everything at once


def save_training_plots(plot_dir: str | os.PathLike, *, history: Sequence[dict], params: Any,
                        x_test_images: ArrayLike, y_test: ArrayLike, preds: ArrayLike,
                        class_names: Sequence[str] | None = None,
                        test_loss: float | None = None) -> list[Path]:
    """Write curves.png, confusion.png, misclassified.png and first_layer.png into plot_dir.

    params: the list of {"W", "b"} dicts (first layer W is (784, H), or a CNN's (3, 3, 1, F));
    x_test_images (N, 784) or (N, 28, 28); y_test, preds: (N,) ints; history: the epoch records (see
    plot_curves); class_names: the classes' names in the pictures (default: the indices). The curves
    show the final test accuracy (from y_test and preds) and test_loss, when given, at the last epoch.
    """
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    y_test, preds = np.asarray(y_test), np.asarray(preds)
    # The output layer's width is the class count, even when a class is absent from y_test.
    num_classes = len(class_names) if class_names is not None else int(np.shape(params[-1]["b"])[-1])
    test_accuracy = float(np.mean(y_test == preds)) if y_test.size else None
    return [
        plot_curves(history, plot_dir / "curves.png", test_loss=test_loss, test_accuracy=test_accuracy),
        plot_confusion(y_test, preds, plot_dir / "confusion.png", class_names, num_classes=num_classes),
        plot_misclassified(x_test_images, y_test, preds, plot_dir / "misclassified.png",
                           class_names=class_names),
        plot_first_layer(params[0]["W"], plot_dir / "first_layer.png"),
    ]


# ----------------------------------------------------------------------------- augmentation


def augmentation_figure(image: ArrayLike, rows: Sequence[tuple[str, ArrayLike]]) -> Figure:
    """One row per augmentation: the original digit, then that augmentation's variants of it.

    Args:
        image: one image, (H, W) or (H*W,) with a square pixel count, values in [0, 1].
        rows: (name, variants) pairs; variants (K, H, W) or (K, H*W), the same K in every row.
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
    """
    import jax
    import jax.numpy as jnp

    from . import augment

    flat = np.asarray(image, np.float32).reshape(1, -1)
    batch = jnp.asarray(np.repeat(flat, copies, axis=0))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    rows = [("random_shift", augment.random_shift(k1, batch)), ("random_affine", augment.random_affine(k2, batch)),
            (f"random_elastic (sigma {elastic_sigma:g}, alpha {elastic_alpha:g})",
             augment.random_elastic(k3, batch, elastic_sigma, elastic_alpha))]
    return _save(augmentation_figure(flat[0], rows), path)
