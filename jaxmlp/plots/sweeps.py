"""Sweep results: test accuracy against each swept hyperparameter."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .canvas import _new_figure, _save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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

    Args:
        runs: ``[{"config": {...}, ...}, ...]``.

    Returns:
        The keys: numeric keys with more distinct values first; "seed" last (repeats, not a knob).
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
    """The figure that plot_sweep saves; tests inspect its axes.

    Args:
        runs: as for plot_sweep.

    Returns:
        The matplotlib Figure.
    """
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
    """Test accuracy against each swept hyperparameter.

    One varying key: the mean test accuracy of the runs at each value as a line, every run as a dot.
    Two: one such line per value of the second key. More: one panel per key, each line pooling all
    runs with that value. A varying "seed" is averaged over when other keys vary too. Learning rates
    use a log x-axis; non-numeric values are categories. The title says what the lines are and how
    many runs each point averages.

    Args:
        runs: ``[{"config": {...}, "test_accuracy": float}, ...]``.
        path: the PNG to write.

    Returns:
        The PNG's path.
    """
    return _save(sweep_figure(runs), path)
