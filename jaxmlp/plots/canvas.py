"""The canvas every picture is drawn on: a ``matplotlib.figure.Figure`` on an Agg canvas (no display,
no pyplot state), saved as a PNG; and the error when matplotlib is missing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
