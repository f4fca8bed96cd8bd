"""PNG pictures of a run: learning curves, confusion matrix, misclassified digits, first-layer
weights and sweep results.

matplotlib is an optional extra (``pip install 'jaxmlp[plots]'``) imported only inside these
functions. Figures are drawn with ``matplotlib.figure.Figure`` on an Agg canvas, so no display is
needed and pyplot's global state is never touched. Inputs are plain NumPy arrays / lists.

One concern a module: ``curves`` (loss and accuracy against epoch), ``sweeps`` (test accuracy against
the swept hyperparameters), ``images`` (the confusion matrix, misclassified digits, first-layer weights
and augmented digits) and ``canvas`` (the figure, its save, the missing-matplotlib error). Every public
name is importable from ``jaxmlp.plots``, and ``save_training_plots`` draws a run's four pictures at once.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .canvas import PLOTS_EXTRA_HINT as PLOTS_EXTRA_HINT, PlotsUnavailableError
from .curves import curves_figure, plot_curves
from .images import (
    augmentation_figure,
    confusion_matrix,
    misclassified_indices,
    plot_augmentations,
    plot_confusion,
    plot_first_layer,
    plot_misclassified,
)
from .sweeps import plot_sweep, sweep_figure, varying_hyperparameters

__all__ = [
    "PlotsUnavailableError",
    "augmentation_figure",
    "confusion_matrix",
    "curves_figure",
    "misclassified_indices",
    "plot_augmentations",
    "plot_confusion",
    "plot_curves",
    "plot_first_layer",
    "plot_misclassified",
    "plot_sweep",
    "save_training_plots",
    "sweep_figure",
    "varying_hyperparameters",
]


def save_training_plots(plot_dir: str | os.PathLike, *, history: Sequence[dict], params: Any,
                        x_test_images: ArrayLike, y_test: ArrayLike, preds: ArrayLike,
                        class_names: Sequence[str] | None = None,
                        test_loss: float | None = None) -> list[Path]:
    """Write curves.png, confusion.png, misclassified.png and first_layer.png into plot_dir.

    The curves show the final test accuracy (from y_test and preds) and test_loss, when given, at the
    last epoch.

    Args:
        plot_dir: the folder to write into.
        history: the epoch records (see plot_curves).
        params: the list of {"W", "b"} dicts (first layer W is (784, H), or a CNN's (3, 3, 1, F)).
        x_test_images: (N, 784) or (N, 28, 28).
        y_test: (N,) int labels.
        preds: (N,) int predictions.
        class_names: the classes' names in the pictures (default: the indices).
        test_loss: the run's test loss, if known.

    Returns:
        The paths of the four PNGs.
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
