"""What ``jaxmlp reproduce`` prints: the Markdown table of paper against jaxmlp (with the total time and
the machine), a row's result line, and ``--list``'s text of the tables."""
from __future__ import annotations

import os
from collections.abc import Sequence

from ..manifest import environment
from .plan import batch_minutes, batches, units
from .tables import TABLES, Table, recipe_text, table_by_name

__all__ = ["markdown_table", "list_tables", "value_text", "seconds_text"]


def markdown_table(table: Table, records: Sequence[dict]) -> str:
    """Paper against jaxmlp, one line per record, as Markdown (with the total time and the machine).

    Args:
        table: the ``Table`` the records belong to.
        records: ``run_table`` records.

    Returns:
        The Markdown text: a heading line, the table and a footer with the total time and the machine.
    """
    if table.metric == "accuracy":
        head = "| experiment | notebook | jaxmlp | same digits | time |\n| --- | ---: | ---: | :---: | ---: |"
    else:
        head = ("| row | paper error | jaxmlp error | at or below | time | differences from the paper |\n"
                "| --- | ---: | ---: | :---: | ---: | --- |")
    lines = [f"**{table.name}**: {table.title} ({table.source})", "", head]
    spans: dict = {}  # rows trained at the same time count once, by the longest of them
    for r in records:
        together = f" ({len(r['trained_with']) + 1} rows together)" if r.get("trained_with") else ""
        key = tuple(r.get("at_once") or sorted([r["id"], *r.get("trained_with", [])]))
        spans[key] = max(spans.get(key, 0.0), r.get("started_after", 0.0) + r["seconds"])
        yes = "yes" if r["meets"] else "**no**"
        time_text = seconds_text(r["seconds"]) + together
        if table.metric == "accuracy":
            lines.append(f"| {r['name']} | {r['paper']:.2f}% | {r['jaxmlp']:.2f}% | {yes} | {time_text} |")
        else:
            lines.append(f"| {r['name']} | {r['paper']:g}% | {r['jaxmlp']:.2f}% | {yes} | {time_text} | "
                         f"{r['notes']} |")
    env = environment()
    at_once = [r for r in records if r.get("at_once")]
    concurrent = (f" ({len(at_once)} of them in units trained at the same time, a thread per core: such a row's "
                  "time is its unit's while it shared the CPU)" if at_once else "")
    lines += ["", f"{len(records)} rows in {seconds_text(sum(spans.values()))} of training{concurrent} on {env['cpu']} "
                  f"({env['cores']} cores, {env['backend']}); jax {env['jax']}, jaxmlp {env['jaxmlp']}"
                  f"{_load_text(env['cores'])}."]
    return "\n".join(lines) + "\n"


def list_tables(name: str | None = None) -> str:
    """The tables (or table ``name``), their rows, recipes and expected times, as text.

    Args:
        name: one table, or None for all.

    Returns:
        The text, one line per table and per row.
    """
    lines = []
    for table in [table_by_name(name)] if name else TABLES.values():
        total = sum(batch_minutes(batch) for batch in batches(units(list(table.rows))))
        lines.append(f"{table.name}: {table.title} ({table.source}); about {seconds_text(total * 60)} on a 2-core "
                     f"CPU (an estimate)")
        for r in table.rows:
            what = "error" if table.metric == "error" else "accuracy"
            lines.append(f"  {r.id:<16} {r.name}: paper {what} {r.paper:g}%, ~{r.minutes:g} min")
            lines.append(f"  {'':<16} jaxmlp train {recipe_text(r.recipe)}")
    return "\n".join(lines)


def value_text(table: Table, record: dict) -> str:
    if table.metric == "accuracy":
        return (f"accuracy {record['jaxmlp']:.2f}% (notebook {record['paper']:.2f}%: "
                f"{'the same' if record['meets'] else 'DIFFERENT'})")
    return (f"error {record['jaxmlp']:.2f}% (paper {record['paper']:g}%: "
            f"{'at or below' if record['meets'] else 'ABOVE'})")


def _load_text(cores) -> str:
    """The 1-minute load average when the table is written; above the core count, other work shared the
    CPU and the times are upper bounds."""
    if not hasattr(os, "getloadavg"):
        return ""
    load = os.getloadavg()[0]
    shared = isinstance(cores, int) and load > cores
    return f"; load average {load:.1f} at the end" + (" (other work shared the CPU: times are upper bounds)"
                                                       if shared else "")


def seconds_text(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
