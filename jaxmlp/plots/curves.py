"""Learning curves: loss against epoch, beside accuracy against epoch."""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .canvas import _new_figure, _save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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


def _series(history: Sequence[dict], name: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the records of ``history`` that have ``name``."""
    pts = [(float(h["epoch"]), float(h[name])) for h in history if h.get(name) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def curves_figure(history: Sequence[dict], *, test_loss: float | None = None,
                  test_accuracy: float | None = None) -> Figure:
    """The figure that plot_curves saves; tests inspect its axes.

    Args:
        history: as for plot_curves.
        test_loss: as for plot_curves.
        test_accuracy: as for plot_curves.

    Returns:
        The matplotlib Figure.
    """
    if not history or any("epoch" not in h or "loss" not in h for h in history):
        raise ValueError("plot_curves: history is empty" if not history else
                         "plot_curves: every history entry needs 'epoch' and 'loss'")

    series = functools.partial(_series, history)

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

    Args:
        history: one dict per epoch with "epoch" and "loss" (the mean training loss over that epoch's
            minibatches), optionally "val_loss", "test_loss", "val_accuracy", "test_accuracy",
            "train_accuracy" (fractions); keys missing from some epochs are simply not drawn there.
        path: the PNG to write.
        test_loss, test_accuracy: the run's final test numbers (e.g. FitResult's), drawn as one star
            at the last epoch unless the history already has that series.

    Returns:
        The PNG's path.
    """
    return _save(curves_figure(history, test_loss=test_loss, test_accuracy=test_accuracy), path)
