"""Published MNIST tables, reproduced with this library: ``jaxmlp reproduce TABLE``.

A *table* is data: its rows, each a published number and the *recipe* that reproduces it here (a
``TrainConfig`` for ``runs.fit``, or ``NotebookRecipe``: the seed notebook's own float64 run), with the
notes on where the recipe differs from the paper and the expected time on a 2-core CPU. ``run_table``
trains the rows (skipping those already finished in its output folder), writes each row's result and
run manifest (``jaxmlp.manifest``), and ``markdown_table`` sets paper against jaxmlp.

* ``seed``: the notebook's table (its four printed experiments, and the 256-128 one its output cut
  off), exact in float64 as ``--notebook-exact`` gives them. Rows that share a shape (hidden sizes,
  batch size) share the notebook's init and minibatch order, so they train together: one vmapped
  program over their learning rates (``fit_notebook_group``).
* ``lecun1998``, ``simard2003``, ``dropout2014``: MLPs without convolutions from LeCun et al. 1998,
  Simard, Steinkraus & Platt 2003 (ICDAR) and Srivastava et al. 2014 (JMLR), each row's error at or
  below the published one being the goal.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import TrainConfig
from .events import DivergenceError, StopRun
from .model import init_params_numpy
from .notebook import (
    REPLAY_IMAGES,
    REPLAY_LR,
    NotebookResult,
    _check_args,
    _check_divergence,
    _epoch,
    _step,
    _test,
)

__all__ = ["NotebookRecipe", "Row", "Table", "TABLES", "fit_notebook_group", "table_by_name", "select_rows",
           "run_table", "markdown_table", "list_tables"]


# ---------------------------------------------------------------- the notebook's runs, grouped


@jax.jit
def _group_batches(params, x: jax.Array, y: jax.Array, idx: jax.Array, lrs: jax.Array):
    """``notebook._full_batches`` vmapped over the members (params with a leading (K,) axis, lrs (K,));
    returns (params, losses (K, steps, 2)).

    Inside the scan the first layer's W is kept as (D, K, H1), members on its middle axis: the members share
    their input minibatch, so its forward and gradient dots are one (B, D) by (D, K * H1) product and need no
    transposes of the widest array every step (members first cost ~10% more on a CPU). Same bits either way.
    """
    axes = [{"W": 1, "b": 0}] + [{"W": 0, "b": 0}] * (len(params) - 1)
    step = jax.vmap(_step, in_axes=(axes, None, None, 0), out_axes=(axes, 0))
    carry = [{"W": jnp.moveaxis(params[0]["W"], 0, 1), "b": params[0]["b"]}, *params[1:]]
    carry, losses = jax.lax.scan(lambda c, batch: step(c, x[batch], y[batch], lrs), carry, idx)
    return [{"W": jnp.moveaxis(carry[0]["W"], 1, 0), "b": carry[0]["b"]}, *carry[1:]], jnp.moveaxis(losses, 0, 1)


_group_step = jax.jit(jax.vmap(_step, in_axes=(0, None, None, 0)))


def _group_epoch(params, x: jax.Array, y: jax.Array, perm: np.ndarray, lrs: jax.Array, batch_size: int):
    """``notebook._epoch`` for K members at once: params with a leading (K,) axis, lrs (K,); returns the
    params, the K notebook epoch losses and the (K, steps) standard cross-entropies."""
    n = x.shape[0]
    num_full = n // batch_size
    head = jnp.asarray(perm[: num_full * batch_size].reshape(num_full, batch_size))
    params, losses = _group_batches(params, x, y, head, lrs)
    losses = np.asarray(losses).reshape(len(lrs), -1, 2)
    if n % batch_size:
        tail = jnp.asarray(perm[num_full * batch_size:])
        params, last = _group_step(params, x[tail], y[tail], lrs)
        losses = np.concatenate([losses, np.asarray(last)[:, None]], axis=1)
    return params, np.sum(losses[:, :, 0], axis=1) / max(num_full, 1), losses[:, :, 1]


def _member(params, k: int):
    return jax.tree_util.tree_map(lambda p: p[k], params)


def fit_notebook_group(data, lrs: Sequence[float], *, batch_size: int = 32, epochs: int = 10, seed: int = 42,
                       hidden=(128, 64), replay_step: bool = False, on_epoch: Callable | None = None,
                       divergence: bool = True) -> list[NotebookResult]:
    """``notebook.fit_notebook`` for several learning rates at once, one result per lr.

    The notebook's stream (``np.random.seed``, the init, one permutation per epoch) depends on the seed
    and the shapes only, so runs that differ only in lr start from the same params and see the same
    minibatches: they train as one program vmapped over lr. One lr runs ``fit_notebook``'s own compiled
    epoch, bit for bit; several agree with their single runs to float64 rounding (a vmapped matmul may
    sum in another order), far below the notebook's printed digits.

    Args:
        data: a ``data.Dataset`` of uint8 images and labels 0..9.
        lrs: the learning rates, one member each.
        batch_size: examples per step (the short last batch as the notebook slices it).
        epochs: passes over the training set.
        seed: the notebook's ``np.random`` seed.
        hidden: the hidden layer sizes.
        replay_step: first apply the notebook's one test update (lr 0.01, 5 images) to the shared init.
        on_epoch: ``on_epoch(epoch, params_list, records)`` after each epoch (members' params and
            ``{"epoch", "loss"}`` records); raising ``events.StopRun`` ends the runs there.
        divergence: ``fit_notebook``'s rule (an epoch's cross-entropy past 10x its start raises
            ``DivergenceError``, naming the member's lr); a non-finite loss raises either way.
    """
    lrs = [float(lr) for lr in lrs]
    if not lrs:
        raise ValueError("lrs: expected at least one learning rate")
    for lr in lrs:
        hidden = _check_args(data, lr, batch_size, epochs, seed, hidden)
    from .data import normalize

    with jax.enable_x64(True):
        as_x = lambda a: normalize(np.asarray(a).reshape(len(a), -1), jnp.float64)  # noqa: E731
        x, y = as_x(data.x_train), jnp.asarray(np.asarray(data.y_train, np.int32))
        rng = np.random.RandomState(seed)
        params = init_params_numpy(rng, [x.shape[1], *hidden, 10])
        if replay_step:
            params, _ = _step(params, x[:REPLAY_IMAGES], y[:REPLAY_IMAGES], REPLAY_LR)
        if len(lrs) > 1:
            params = jax.tree_util.tree_map(lambda p: jnp.stack([p] * len(lrs)), params)
        histories: list[list] = [[] for _ in lrs]
        starts: list = [None] * len(lrs)
        for e in range(1, epochs + 1):
            params, values = _one_epoch(params, x, y, rng.permutation(x.shape[0]), lrs, batch_size, e, starts,
                                        divergence)
            for history, value in zip(histories, values):
                history.append({"epoch": e, "loss": float(value)})
            members = [params] if len(lrs) == 1 else [_member(params, k) for k in range(len(lrs))]
            try:
                if on_epoch is not None:
                    on_epoch(e, members, [h[-1] for h in histories])
            except StopRun:
                break
        x_test, y_test = as_x(data.x_test), jnp.asarray(np.asarray(data.y_test, np.int32))
        return [NotebookResult(p, h, *_test(p, x_test, y_test)) for p, h in zip(members, histories)]


def _one_epoch(params, x, y, perm, lrs: list, batch_size: int, epoch: int, starts: list, divergence: bool):
    """(params, notebook epoch losses) of one epoch of every member. ``notebook.fit_notebook``'s checks
    for each member (``starts``: their first cross-entropies, filled in epoch 1): DivergenceError."""
    if len(lrs) == 1:
        params, value, ce = _epoch(params, x, y, perm, lrs[0], batch_size)
        values, ces = [value], [ce]
    else:
        params, values, ces = _group_epoch(params, x, y, perm, jnp.asarray(lrs, jnp.float64), batch_size)
    for k, (lr, ce) in enumerate(zip(lrs, ces)):
        starts[k] = max(float(ce[0]), math.log(10)) if starts[k] is None else starts[k]
        try:
            _check_divergence(ce, starts[k], epoch, divergence)
        except DivergenceError as err:
            raise DivergenceError(f"{err} (the lr {lr:g} run)" if len(lrs) > 1 else str(err)) from None
    return params, values


# ---------------------------------------------------------------- tables as data


class NotebookRecipe(NamedTuple):
    """The seed notebook's own float64 run (``--notebook-exact``): SGD with its manual backprop, its init
    and its minibatch order. lr: learning rate; batch_size: examples per step; hidden: hidden sizes;
    epochs: passes; seed: the notebook's ``np.random`` seed."""

    lr: float
    batch_size: int = 32
    hidden: tuple = (128, 64)
    epochs: int = 10
    seed: int = 42

    def settings(self) -> dict:
        """JSON-ready settings, as a notebook manifest's config records them."""
        return {"lr": self.lr, "batch_size": self.batch_size, "hidden": list(self.hidden), "epochs": self.epochs,
                "seed": self.seed, "dataset": "mnist", "replay_step": False}

    def shape(self) -> tuple:
        """What rows must share to train together: everything but the lr."""
        return (self.batch_size, tuple(self.hidden), self.epochs, self.seed)


class Row(NamedTuple):
    """One published number and how this library reproduces it.

    id: the row's short name (``--rows``); name: the paper's wording; paper: the published number (an
    error in % for the papers, the notebook's printed accuracy in % for ``seed``); recipe: a
    ``TrainConfig`` (``runs.fit``) or a ``NotebookRecipe``; minutes: the expected wall time on a 2-core
    CPU (an estimate); notes: where the recipe differs from the paper.
    """

    id: str
    name: str
    paper: float
    recipe: Any
    minutes: float
    notes: str = ""


class Table(NamedTuple):
    """A published table. name: ``jaxmlp reproduce NAME``; title and source: what and whence; metric:
    "error" (goal: at or below the paper's) or "accuracy" (goal: the notebook's printed digits);
    rows: its ``Row`` s; notes: what every row shares."""

    name: str
    title: str
    source: str
    metric: str
    rows: tuple
    notes: str = ""

    def __str__(self) -> str:
        return self.name


def _mlp(hidden, epochs: int, augment: str = "none", **kw) -> TrainConfig:
    """The recipes' common ground: He init, batch 128, a cosine-decayed lr, cross-entropy."""
    base = dict(hidden=tuple(hidden), init="he", batch_size=128, schedule="cosine", epochs=epochs, augment=augment)
    return TrainConfig(**{**base, "optimizer": "adam", "lr": 1e-3, **kw})


_LECUN = ("cross-entropy on softmax outputs instead of the paper's mean squared error; Adam with a cosine-"
          "decayed lr and He init instead of SGD with stochastic diagonal Levenberg-Marquardt steps")
_LECUN_DISTORT = (_LECUN + "; distortions drawn fresh every step by random_affine (rotation up to 10 degrees, "
                  "scale 0.9-1.1, shift up to 2 px) instead of 540,000 stored distorted copies (translation, "
                  "scaling, squeezing, shearing)")
_SIMARD = ("SGD with momentum 0.9, a cosine-decayed lr, L2 5e-5 and He init instead of plain SGD with a "
           "decaying lr")
_DROPOUT = ("SGD with momentum 0.9 and a cosine-decayed lr for 150 epochs instead of momentum rising to 0.99 over "
            "thousands of epochs; dropout 0.2 on the input pixels as in the paper, 0.3 on the hidden units (the paper: "
            "0.5), chosen on a 10,000-image validation split of the training set in 40-epoch trials: 98.62% there "
            "against 98.50% without input dropout and 98.25% with the paper's 0.5 (and max-norm), which underfits "
            "at this length")

# Expected minutes: each network's epoch time on the 2-core CPU (batch 128, float32; 800 HU: 1.7-2.2 s an
# epoch plain, 2.9 affine, ~4.8 elastic; 3x1024: 6.4-7.4 s with input dropout, measured in full rows), scaled
# by FLOPs to the other widths and by the recipe's epochs, plus compiling and testing. Estimates, not measured rows.
# The seed rows: each run alone on a 2-core CPU (float64, batch 32: ~10-11 s for 128-64, ~17 s for 256-128).
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("seed", "the seed notebook's experiments", "the seed notebook (its printed test accuracies)",
          "accuracy", (
              Row("lr0.01", "lr 0.01, 128-64, batch 32", 93.83, NotebookRecipe(0.01), 0.2,
                  "the notebook printed 93.82% after one extra test update on 5 images (--replay-notebook-step)"),
              Row("lr0.1", "lr 0.1, 128-64, batch 32", 97.09, NotebookRecipe(0.1), 0.2),
              Row("lr0.001", "lr 0.001, 128-64, batch 32", 11.35, NotebookRecipe(0.001), 0.2),
              Row("256-128", "lr 0.01, 256-128, batch 32", 94.82, NotebookRecipe(0.01, hidden=(256, 128)), 0.3,
                  "the notebook's output stops before this experiment's result; 94.82% is this library's float64 "
                  "run of its code"),
              Row("batch128", "lr 0.01, 128-64, batch 128", 75.48, NotebookRecipe(0.01, batch_size=128), 0.15),
          ), "float64, the notebook's own init, minibatch order, manual backprop and loss formula; rows of one "
             "shape train together (one program vmapped over lr)"),
    Table("lecun1998", "MLPs without convolutions", "LeCun, Bottou, Bengio & Haffner 1998, Gradient-based "
          "learning applied to document recognition, Proc. IEEE (Fig. 9 and appendix C)", "error", (
              Row("300", "2-layer NN, 300 HU", 4.7, _mlp((300,), 10), 0.3, _LECUN),
              Row("300-distort", "2-layer NN, 300 HU, distortions", 3.6, _mlp((300,), 20, "affine"), 0.6,
                  _LECUN_DISTORT),
              Row("1000", "2-layer NN, 1000 HU", 4.5, _mlp((1000,), 10), 0.6, _LECUN),
              Row("1000-distort", "2-layer NN, 1000 HU, distortions", 3.8, _mlp((1000,), 20, "affine"), 1.3,
                  _LECUN_DISTORT),
              Row("300-100", "3-layer NN, 300+100 HU", 3.05, _mlp((300, 100), 10), 0.3, _LECUN),
              Row("300-100-distort", "3-layer NN, 300+100 HU, distortions", 2.5, _mlp((300, 100), 20, "affine"),
                  0.6, _LECUN_DISTORT),
              Row("500-150", "3-layer NN, 500+150 HU", 2.95, _mlp((500, 150), 10), 0.4, _LECUN),
              Row("500-150-distort", "3-layer NN, 500+150 HU, distortions", 2.45, _mlp((500, 150), 20, "affine"),
                  0.9, _LECUN_DISTORT),
          ), "2-layer: one hidden layer; HU: hidden units; distortions: the training images randomly distorted"),
    Table("simard2003", "an MLP with distortions", "Simard, Steinkraus & Platt 2003, Best practices for "
          "convolutional neural networks applied to visual document analysis, ICDAR (Table 1)", "error", (
              Row("800", "2-layer MLP, 800 HU, cross-entropy", 1.6,
                  _mlp((800,), 60, optimizer="momentum", lr=0.05, l2=5e-5, dropout=0.3), 2.5,
                  _SIMARD + "; dropout 0.3 on the hidden units and 60 epochs (chosen on a 10,000-image validation "
                  "split of the training set: 1.73% there against 2.09% for 30 epochs without dropout)"),
              Row("800-affine", "2-layer MLP, 800 HU, affine distortions", 1.1,
                  _mlp((800,), 60, "affine", optimizer="momentum", lr=0.05, l2=5e-5), 3.2,
                  _SIMARD + "; random_affine (rotation, scale, shift) for the paper's affine distortions"),
              Row("800-elastic", "2-layer MLP, 800 HU, elastic distortions", 0.7,
                  _mlp((800,), 150, "elastic", optimizer="momentum", lr=0.05, l2=5e-5), 12.5,
                  _SIMARD + "; elastic fields sigma 4, alpha 34 as the paper's best, drawn fresh every step "
                  "(the stretch row)"),
          ), "the paper's distortions: affine, and elastic (U(-1, 1) per-pixel fields smoothed by a Gaussian of "
             "sigma 4, scaled by alpha 34, bilinear sampling)"),
    Table("dropout2014", "dropout and max-norm", "Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov "
          "2014, Dropout: a simple way to prevent neural networks from overfitting, JMLR (Table 2)", "error", (
              Row("dropout", "3 layers of 1024 ReLU units, dropout", 1.25,
                  _mlp((1024, 1024, 1024), 150, optimizer="momentum", lr=0.1, dropout=0.3, input_dropout=0.2), 17.0,
                  _DROPOUT),
              Row("dropout-maxnorm", "3 layers of 1024 ReLU units, dropout + max-norm", 1.06,
                  _mlp((1024, 1024, 1024), 150, optimizer="momentum", lr=0.1, dropout=0.3, input_dropout=0.2,
                       max_norm=3.5), 17.0,
                  _DROPOUT + "; max-norm 3.5 on every unit's incoming weights (in the 40-epoch trials 98.61% with it, "
                  "98.62% without: at this lr the bound hardly binds; with lr 0.3, where it would, training was "
                  "unstable, 89% after 9 epochs)"),
          ), "3 hidden layers of 1024 ReLU units"),
)}


def table_by_name(name: str) -> Table:
    """The table ``name``; ValueError naming the choices otherwise.

    Args:
        name: one of ``TABLES``.
    """
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(TABLES)} (see --list)")
    return TABLES[name]


def select_rows(table: Table, ids: Sequence[str] | None = None) -> list[Row]:
    """The rows of ``table`` named by ``ids`` (all when None or empty), in the table's order.

    Args:
        table: a ``Table``.
        ids: row ids; ValueError naming the first unknown one and the choices.
    """
    known = [r.id for r in table.rows]
    for i in ids or ():
        if i not in known:
            raise ValueError(f"--rows: table {table.name} has no row {i!r}; choose from {', '.join(known)}")
    return [r for r in table.rows if not ids or r.id in ids]


def _recipe_text(recipe) -> str:
    if isinstance(recipe, NotebookRecipe):
        return (f"--notebook-exact --lr {recipe.lr:g} --hidden {' '.join(map(str, recipe.hidden))} "
                f"--batch-size {recipe.batch_size} --epochs {recipe.epochs}")
    default = TrainConfig()
    flags = [f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
             for k, v in vars(recipe).items() if k != "preset" and v != getattr(default, k)]
    return " ".join(flags)


def list_tables(name: str | None = None) -> str:
    """The tables (or table ``name``), their rows, recipes and expected times, as text.

    Args:
        name: one table, or None for all.
    """
    lines = []
    for table in [table_by_name(name)] if name else TABLES.values():
        total = sum(_batch_minutes(batch) for batch in _batches(_units(list(table.rows))))
        lines.append(f"{table.name}: {table.title} ({table.source}); about {_seconds(total * 60)} on a 2-core "
                     f"CPU (an estimate)")
        for r in table.rows:
            what = "error" if table.metric == "error" else "accuracy"
            lines.append(f"  {r.id:<16} {r.name}: paper {what} {r.paper:g}%, ~{r.minutes:g} min")
            lines.append(f"  {'':<16} jaxmlp train {_recipe_text(r.recipe)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- running rows


def _recipe_record(recipe) -> dict:
    """The recipe as JSON (what a finished row must match to be skipped)."""
    if isinstance(recipe, NotebookRecipe):
        return {"notebook": recipe.settings()}
    return {"config": recipe.to_dict()}


def _units(rows: Sequence[Row]) -> list[list[Row]]:
    """Rows in training units: notebook rows of one shape together, every other row alone; table order."""
    units: list[list[Row]] = []
    by_shape: dict = {}
    for row in rows:
        if isinstance(row.recipe, NotebookRecipe):
            if row.recipe.shape() in by_shape:
                by_shape[row.recipe.shape()].append(row)
                continue
            by_shape[row.recipe.shape()] = [row]
            units.append(by_shape[row.recipe.shape()])
        else:
            units.append([row])
    return units


def _record(table: Table, row: Row, accuracy: float, loss: float, seconds: float, together: list) -> dict:
    value = round(accuracy * 100, 2) if table.metric == "accuracy" else round(100 - accuracy * 100, 2)
    meets = abs(value - row.paper) < 1e-9 if table.metric == "accuracy" else value <= row.paper + 1e-9
    return {"table": table.name, "id": row.id, "name": row.name, "metric": table.metric, "paper": row.paper,
            "jaxmlp": value, "meets": bool(meets), "test_accuracy": float(accuracy), "test_loss": float(loss),
            "seconds": round(float(seconds), 2), "trained_with": [r for r in together if r != row.id],
            "recipe": _recipe_record(row.recipe), "notes": row.notes,
            "manifest": f"manifests/{table.name}-{row.id}.json"}


def _run_config(table: Table, row: Row, data, data_rec: dict, say: Callable) -> list[tuple[dict, dict]]:
    from .manifest import EpochRecorder, build_manifest
    from .runs import fit

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
    from .manifest import EpochRecorder, build_manifest

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
    from .fileio import atomic_write, write_json
    from .manifest import environment

    rows = [results[r.id] for r in table.rows if r.id in results]
    write_json(out / f"{table.name}.json", {"table": table.name, "title": table.title, "source": table.source,
                                             "metric": table.metric, "rows": rows, "environment": environment()})
    text = markdown_table(table, rows)
    atomic_write(out / f"{table.name}.md", lambda f: None if f.write(text.encode()) is None else None)


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

    Returns the records of ``rows``, in table order: ``{"id", "name", "paper", "jaxmlp", "meets",
    "seconds", "trained_with", "recipe", "notes", ...}``.
    """
    from .manifest import data_record, write_manifest

    say = _whole_lines(say or (lambda text: None))  # units in threads say their epochs too
    out = None if out is None else Path(out)
    found = {} if out is None else _finished(out, table)
    # A row counts as finished only with the recipe it has now: a changed recipe trains again.
    results = {r.id: found[r.id] for r in table.rows
               if r.id in found and found[r.id].get("recipe") == _recipe_record(r.recipe)}
    todo = [r for r in rows if r.id not in results]
    for r in rows:
        if r.id in results:
            say(f"{table.name} {r.id}: finished in {out} before ({results[r.id]['jaxmlp']:g}%), not trained again")
    data_rec = data_record(data_dir, "mnist") if todo else {}
    count, done, started = len(todo), 0, 0
    for batch in _batches(_units(todo)):
        started = _say_starting(table, batch, started, count, say)
        for pairs in _train_batch(table, batch, data, data_rec, say):
            for record, m in pairs:
                done += 1
                results[record["id"]] = record
                if out is not None:
                    write_manifest(out / record["manifest"], m)
                say(f"[{done}/{count}] {record['id']}: {_value_text(table, record)} in "
                    f"{_seconds(record['seconds'])}")
            if out is not None:
                _write_outputs(out, table, results)
    return [results[r.id] for r in rows]


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
            f"{_unit_minutes(unit):.1f} min expected (an estimate)")
        started += len(unit)
    return started


def _batches(units: list[list[Row]]) -> list[list[list[Row]]]:
    """Units in batches trained at the same time: every notebook unit in one batch (each is a small
    float64 program that leaves most of a multi-core CPU idle, and their sum is what ``reproduce seed``
    waits for), every engine row alone (its time is the row's, compared with the paper's budget)."""
    notebook = [u for u in units if isinstance(u[0].recipe, NotebookRecipe)]
    batches: list[list[list[Row]]] = [[u] for u in units if not isinstance(u[0].recipe, NotebookRecipe)]
    return ([notebook] if notebook else []) + batches


def _unit_minutes(unit: list[Row]) -> float:
    """A unit's expected minutes: a row's, or a group's (its longest row's, half again for the members)."""
    return sum(r.minutes for r in unit) if len(unit) == 1 else max(r.minutes for r in unit) * 1.5


def _batch_minutes(batch: list[list[Row]], cores: int = 2) -> float:
    """A batch's expected minutes on a ``cores``-core CPU: its units' minutes shared out over the cores,
    at least its longest unit's (a rough rule: a unit alone uses more than one core)."""
    minutes = [_unit_minutes(u) for u in batch]
    return max(max(minutes), sum(minutes) / min(cores, len(minutes)))


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
    order = sorted(batch, key=_unit_minutes, reverse=True)
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


def _value_text(table: Table, record: dict) -> str:
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


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# ---------------------------------------------------------------- the table


def markdown_table(table: Table, records: Sequence[dict]) -> str:
    """Paper against jaxmlp, one line per record, as Markdown (with the total time and the machine).

    Args:
        table: the ``Table`` the records belong to.
        records: ``run_table`` records.
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
        time_text = _seconds(r["seconds"]) + together
        if table.metric == "accuracy":
            lines.append(f"| {r['name']} | {r['paper']:.2f}% | {r['jaxmlp']:.2f}% | {yes} | {time_text} |")
        else:
            lines.append(f"| {r['name']} | {r['paper']:g}% | {r['jaxmlp']:.2f}% | {yes} | {time_text} | "
                         f"{r['notes']} |")
    from .manifest import environment

    env = environment()
    at_once = [r for r in records if r.get("at_once")]
    concurrent = (f" ({len(at_once)} of them in units trained at the same time, a thread per core: such a row's "
                  "time is its unit's while it shared the CPU)" if at_once else "")
    lines += ["", f"{len(records)} rows in {_seconds(sum(spans.values()))} of training{concurrent} on {env['cpu']} "
                  f"({env['cores']} cores, {env['backend']}); jax {env['jax']}, jaxmlp {env['jaxmlp']}"
                  f"{_load_text(env['cores'])}."]
    return "\n".join(lines) + "\n"
