"""How a table's rows are trained: in *units* (notebook rows of one shape train together, as one program
vmapped over their learning rates; every other row alone) and *batches* of units trained at the same time,
with the minutes each is expected to take."""
from __future__ import annotations

from collections.abc import Sequence

from .tables import NotebookRecipe, Row

__all__ = ["units", "batches", "unit_minutes", "batch_minutes"]


def units(rows: Sequence[Row]) -> list[list[Row]]:
    """Rows in training units: notebook rows of one shape together, every other row alone; table order."""
    out: list[list[Row]] = []
    by_shape: dict = {}
    for row in rows:
        if isinstance(row.recipe, NotebookRecipe):
            if row.recipe.shape() in by_shape:
                by_shape[row.recipe.shape()].append(row)
                continue
            by_shape[row.recipe.shape()] = [row]
            out.append(by_shape[row.recipe.shape()])
        else:
            out.append([row])
    return out


def batches(units: list[list[Row]]) -> list[list[list[Row]]]:
    """Units in batches trained at the same time: every notebook unit in one batch (each is a small
    float64 program that leaves most of a multi-core CPU idle, and their sum is what ``reproduce seed``
    waits for), every engine row alone (its time is the row's, compared with the paper's budget)."""
    notebook = [u for u in units if isinstance(u[0].recipe, NotebookRecipe)]
    alone: list[list[list[Row]]] = [[u] for u in units if not isinstance(u[0].recipe, NotebookRecipe)]
    return ([notebook] if notebook else []) + alone


def unit_minutes(unit: list[Row]) -> float:
    """A unit's expected minutes: a row's, or a group's (its longest row's, half again for the members)."""
    return sum(r.minutes for r in unit) if len(unit) == 1 else max(r.minutes for r in unit) * 1.5


def batch_minutes(batch: list[list[Row]], cores: int = 2) -> float:
    """A batch's expected minutes on a ``cores``-core CPU: its units' minutes shared out over the cores,
    at least its longest unit's (a rough rule: a unit alone uses more than one core)."""
    minutes = [unit_minutes(u) for u in batch]
    return max(max(minutes), sum(minutes) / min(cores, len(minutes)))
