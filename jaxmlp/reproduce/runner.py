"""Training a table's rows: ``run_table`` trains the rows not yet finished in its output folder, a unit at a
time or (notebook units) side by side, a thread per core, and writes each row's result and run manifest
(``jaxmlp.manifest``), the table's JSON and its Markdown (``report``)."""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ..events import DivergenceError
from ..manifest import EpochRecorder, build_manifest, data_record, environment, write_manifest
from ..notebook import fit_notebook_group
from .plan import batches, unit_minutes, units
from .report import markdown_table, seconds_text, value_text
from .tables import NotebookRecipe, Row, Table, recipe_record

__all__ = ["run_table"]


def run_table(table: Table, rows: Sequence[Row], data, *, data_dir: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, say: Callable[[str], None] | None = None) -> list[dict]:
    """Train ``rows`` of ``table`` on ``data`` and compare each with the paper.

    Args:
        table: a ``Table``.
        rows: the rows to run (``select_rows``).
        data: MNIST as a ``data.Dataset``.
        data_dir: where ``data`` was loaded from (None: as ``jaxmlp.data`` finds it), for the manifests'
            data hashes.
        out: a folder: ``TABLE.md`` (the Markdown table), ``TABLE.json`` (every finished row) and
            ``manifests/TABLE-ID.json`` (each row's run manifest), rewritten after every row. A row
            finished there earlier with the same recipe is not trained again.
        say: progress lines (a line per row, one per epoch).

    Returns:
        The records of ``rows``, in table order: ``{"id", "name", "paper", "jaxmlp", "meets", "seconds",
        "trained_with", "recipe", "notes", ...}``.
    """
    say = _whole_lines(say or (lambda text: None))  # units in threads say their epochs too
    out = None if out is None else Path(out)
    found = {} if out is None else _finished(out, table)
    # A row counts as finished only with the recipe it has now: a changed recipe trains again.
    results = {r.id: found[r.id] for r in table.rows
               if r.id in found and found[r.id].get("recipe") == recipe_record(r.recipe)}
    todo = [r for r in rows if r.id not in results]
    for r in rows:
        if r.id in results:
            say(f"{table.name} {r.id}: finished in {out} before ({results[r.id]['jaxmlp']:g}%), not trained again")
    data_rec = data_record(data_dir, "mnist") if todo else {}
    count, done, started = len(todo), 0, 0
    for batch in batches(units(todo)):
        started = _say_starting(table, batch, started, count, say)
        for pairs in _train_batch(table, batch, data, data_rec, say):
            for record, m in pairs:
                done += 1
                results[record["id"]] = record
                if out is not None:
                    write_manifest(out / record["manifest"], m)
                say(f"[{done}/{count}] {record['id']}: {value_text(table, record)} in "
                    f"{seconds_text(record['seconds'])}")
            if out is not None:
                _write_outputs(out, table, results)
    return [results[r.id] for r in rows]


def _record(table: Table, row: Row, accuracy: float, loss: float, seconds: float, together: list) -> dict:
    value = round(accuracy * 100, 2) if table.metric == "accuracy" else round(100 - accuracy * 100, 2)
    meets = abs(value - row.paper) < 1e-9 if table.metric == "accuracy" else value <= row.paper + 1e-9
    return {"table": table.name, "id": row.id, "name": row.name, "metric": table.metric, "paper": row.paper,
            "jaxmlp": value, "meets": bool(meets), "test_accuracy": float(accuracy), "test_loss": float(loss),
            "seconds": round(float(seconds), 2), "trained_with": [r for r in together if r != row.id],
            "recipe": recipe_record(row.recipe), "notes": row.notes,
            "manifest": f"manifests/{table.name}-{row.id}.json"}


def _run_config(table: Table, row: Row, data, data_rec: dict, say: Callable) -> list[tuple[dict, dict]]:
    from ..runs import fit

    config = row.recipe
    recorder = EpochRecorder(on_record=lambda r: say(f"  {row.id} epoch {r['epoch']}/{config.epochs}: loss "
                                                     f"{r['loss']:.4f}"))
    t0 = time.perf_counter()
    result = fit(config, data, handlers=[recorder])
    seconds = time.perf_counter() - t0
    record = _record(table, row, result.test_accuracy, result.test_loss, seconds, [row.id])
    m = build_manifest("train", config.to_dict(), config.seed, data_rec, recorder.epochs,
                       {"test_loss": result.test_loss, "test_accuracy": result.test_accuracy, "wall_seconds": seconds},
                       divergence_rule=True, devices=1, row=f"{table.name}/{row.id}")
    return [(record, m)]


class _Cancelled(Exception):
    """Raised inside a unit's epoch callback when another unit of its batch failed or the user interrupted."""


def _run_notebook(table: Table, rows: list[Row], data, data_rec: dict, say: Callable,
                  cancel: threading.Event | None = None) -> list[tuple[dict, dict]]:
    first = rows[0].recipe
    lrs = [r.recipe.lr for r in rows]
    recorders = [EpochRecorder() for _ in rows]

    def on_epoch(epoch, params, records):
        if cancel is not None and cancel.is_set():
            raise _Cancelled  # not StopRun: that would end the run as finished and write its rows
        for recorder, p, r in zip(recorders, params, records):
            recorder.add(epoch, p, r["loss"])
        say(f"  {', '.join(r.id for r in rows)} epoch {epoch}/{first.epochs}: loss "
            + " ".join(f"{r['loss']:.4f}" for r in records))

    t0 = time.perf_counter()
    results = fit_notebook_group(data, lrs, batch_size=first.batch_size, epochs=first.epochs, seed=first.seed,
                                 hidden=first.hidden, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    out = []
    for row, result, recorder in zip(rows, results, recorders):
        record = _record(table, row, result.test_accuracy, result.test_loss, seconds, [r.id for r in rows])
        m = build_manifest("notebook", row.recipe.settings(), row.recipe.seed, data_rec, recorder.epochs,
                           {"test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
                            "wall_seconds": seconds}, group=lrs, row=f"{table.name}/{row.id}")
        out.append((record, m))
    return out


def _finished(out: Path, table: Table) -> dict:
    """The rows of ``table`` recorded in ``out`` with their manifests present: {id: record}."""
    try:
        with open(out / f"{table.name}.json", encoding="utf-8") as f:
            rows = json.load(f).get("rows", [])
    except (OSError, ValueError, AttributeError):
        return {}
    return {r["id"]: r for r in rows if isinstance(r, dict) and "id" in r and (out / str(r.get("manifest"))).is_file()}


def _write_outputs(out: Path, table: Table, results: dict) -> None:
    from ..fileio import atomic_write, write_json

    rows = [results[r.id] for r in table.rows if r.id in results]
    write_json(out / f"{table.name}.json", {"table": table.name, "title": table.title, "source": table.source,
                                             "metric": table.metric, "rows": rows, "environment": environment()})
    text = markdown_table(table, rows)
    atomic_write(out / f"{table.name}.md", lambda f: None if f.write(text.encode()) is None else None)


def _whole_lines(say: Callable[[str], None]) -> Callable[[str], None]:
    lock = threading.Lock()

    def say_whole(text: str) -> None:
        with lock:
            say(text)
    return say_whole


def _say_starting(table: Table, batch: list[list[Row]], started: int, count: int, say: Callable) -> int:
    """A progress line for each unit of ``batch`` as it starts; returns ``started`` plus its rows."""
    for unit in batch:
        say(f"[{started + 1}{f'-{started + len(unit)}' if len(unit) > 1 else ''}/{count}] {table.name} "
            f"{', '.join(r.id for r in unit)}: training{' together' if len(unit) > 1 else ''}"
            f"{', alongside the other units (a thread per core)' if len(batch) > 1 else ''}, about "
            f"{unit_minutes(unit):.1f} min expected (an estimate)")
        started += len(unit)
    return started


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _train_batch(table: Table, batch: list[list[Row]], data, data_rec: dict,
                 say: Callable) -> Iterator[list[tuple[dict, dict]]]:
    """Train the units of ``batch`` (one thread each when there are several) and yield each unit's
    (record, manifest) pairs as it finishes. A unit that fails, or an interrupt, stops the others at their
    next epoch; the error is raised once they have stopped."""
    def train(unit: list[Row], cancel: threading.Event | None = None) -> list[tuple[dict, dict]]:
        if isinstance(unit[0].recipe, NotebookRecipe):
            return _run_notebook(table, unit, data, data_rec, say, cancel)
        return _run_config(table, unit[0], data, data_rec, say)

    if len(batch) == 1:
        yield train(batch[0])
        return
    cancel, t0 = threading.Event(), time.perf_counter()
    everyone = sorted(r.id for unit in batch for r in unit)

    def train_timed(unit: list[Row]) -> list[tuple[dict, dict]]:
        start = time.perf_counter() - t0  # a unit may wait for a free thread
        try:
            pairs = train(unit, cancel)
        except (DivergenceError, ValueError) as err:  # name the unit: several were training
            raise type(err)(f"{table.name} {', '.join(r.id for r in unit)}: {err}") from None
        for record, _ in pairs:
            record["started_after"], record["at_once"] = round(start, 2), everyone
        return pairs

    # A thread per core, the longest units first (their expected minutes): on 2 cores the 3-lr group of the
    # seed table gets one core and the 256-128 and batch-128 rows share the other, one after the other,
    # instead of three programs contending for two cores.
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(batch), _cores())), thread_name_prefix="jaxmlp-unit")
    order = sorted(batch, key=unit_minutes, reverse=True)
    futures = [pool.submit(train_timed, unit) for unit in order]
    try:
        for future in as_completed(futures):
            yield future.result()  # a unit's error is raised here
    except BaseException:
        cancel.set()
        raise
    finally:
        # Every thread ends within an epoch of the cancel; waiting here means no run outlives the call.
        pool.shutdown(wait=True, cancel_futures=True)
