"""Hyperparameter sweeps and seed ensembles: many models trained in one compiled program.

A configuration is a ``TrainConfig``. Configurations whose compiled programs would be identical
(same hidden sizes, batch size, optimizer, dtype, epochs, ...: see ``group_key``) form a *group*, and a
group trains as ONE program on the training engine itself: ``engine.chunk`` under ``jax.vmap``
(``group_chunk``), over a ``TrainState`` whose params, optimizer state and hyperparameters (lr,
momentum, ...) carry a leading model axis K while the dataset and the step counters are shared.
Learning rates, seeds and init schemes are just that batch axis (params are drawn outside the
program). Each member's state is built exactly as ``runs.setup`` builds it (bit for bit), all members
at once by one vmapped program over their seeds, init schemes and hyperparameters (``init_members``),
so a member equals the single ``runs.fit`` run of its config up to float round-off.

Which groups share their minibatches. When every member has the same seed (an lr, init or
regularisation sweep), the run key is passed *unbatched*: one shuffle, one set of step keys
(dropout, augmentation), all members see the same minibatch, and each still equals its own single
run. Members with different seeds (a seed sweep, ``--ensemble``) have their own shuffles by default,
because that is what their single runs do; ``share_order=True`` (``--shared-order``) gives them the
first member's run key instead, so they differ only in their initial params and take the same
shared-batch path (one gather per step, one minibatch operand for every member's products). A
member other than the first then equals the single run of its seed's params with the first
member's data order (tested), not its own single run. Members of different shape groups
(hidden sizes, batch size, optimizer, ...) never share a program, so they never share a batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from . import engine, models, parallel, runs, sweep_checkpoint
from .config import TrainConfig
from .events import CaughtSignals, Interrupted
from .groups import GroupResult, GroupStopped, train_group
from .members import check_sweepable, evaluate_members, group_key
from .resume import fingerprint
from .sweep_checkpoint import SweepState

SWEEP_AXES = ("lr", "batch_size", "hidden", "seed", "init")


# ---------------------------------------------------------------- building the configurations


def _check_axes(axes: dict) -> None:
    unknown = set(axes) - set(SWEEP_AXES)
    if unknown:
        raise ValueError(f"cannot sweep over {sorted(unknown)}; sweepable: {', '.join(SWEEP_AXES)}")
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"--{name.replace('_', '-')}: give at least one value")


def grid(base: TrainConfig, **axes: Sequence) -> list[TrainConfig]:
    """Every combination of the given axes (``lr=[...], batch_size=[...], hidden=[(128, 64), ...],
    seed=[...], init=[...]``) over ``base``; axes not given keep ``base``'s value. Order: hidden,
    batch_size, init, seed, lr (lr varies fastest)."""
    _check_axes(axes)
    names = [n for n in ("hidden", "batch_size", "init", "seed", "lr") if n in axes]
    configs = []
    for values in itertools.product(*(axes[n] for n in names)):
        changes = dict(zip(names, values))
        if "hidden" in changes:
            changes["hidden"] = tuple(int(h) for h in changes["hidden"])
        configs.append(dataclasses.replace(base, **changes).validate())
    return configs


def random_search(base: TrainConfig, num_trials: int, *, seed: int = 0,
                  lr_range: tuple[float, float] | None = None, axes: dict | None = None,
                  **choices: Sequence) -> list[TrainConfig]:
    """``num_trials`` random configurations over ``base``: lr log-uniform in ``lr_range`` (if given),
    every other axis in ``choices`` drawn uniformly from its values. Reproducible from ``seed`` (the
    search's own seed; a ``seed`` axis of run seeds goes in ``axes={"seed": [...]}``, which the
    keyword ``choices`` join)."""
    choices = {**(axes or {}), **choices}
    _check_axes(choices)
    if num_trials < 1:
        raise ValueError(f"random_search: num_trials must be positive, got {num_trials}")
    if lr_range is not None:
        lo, hi = float(min(lr_range)), float(max(lr_range))
        if not lo > 0:
            raise ValueError(f"random_search: lr_range must be positive, got {lr_range}")
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(num_trials):
        changes = {name: values[int(rng.integers(len(values)))] for name, values in choices.items()}
        if lr_range is not None:
            changes["lr"] = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        if "hidden" in changes:
            changes["hidden"] = tuple(int(h) for h in changes["hidden"])
        configs.append(dataclasses.replace(base, **changes).validate())
    return configs


def group_by_shape(configs: Sequence[TrainConfig], num_examples: int, image_side: int = 28,
                   max_group: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped by ``group_key`` (groups in order of first appearance), each
    group cut into pieces of at most ``max_group`` members to bound memory (None: uncut).
    ``num_examples`` (N) and ``image_side`` (pixels) describe the training set, as in ``group_key``."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(group_key(c, num_examples, image_side), []).append(i)
    out: list[list[int]] = []
    for members in groups.values():
        step = max_group or len(members)
        out.extend(members[i:i + step] for i in range(0, len(members), step))
    return out


# ---------------------------------------------------------------- sweeps and ensembles end to end


class RunResult(NamedTuple):
    """One trained configuration of a sweep or ensemble.

    Attributes:
        config: the run's configuration.
        history: the epoch training losses (NaN from the epoch it diverged in).
        test_loss: mean test cross-entropy (NaN if diverged).
        test_accuracy: test accuracy, a fraction in [0, 1] (NaN if diverged).
        diverged: the run diverged (``diverged_members``).
        group: index of its compiled program in ``SweepResult.groups``.
    """

    config: TrainConfig
    history: list           # the epoch losses
    test_loss: float
    test_accuracy: float    # a fraction in [0, 1]
    diverged: bool          # a non-finite loss appeared
    group: int              # index into SweepResult.groups


class GroupInfo(NamedTuple):
    """One compiled program of a sweep.

    Attributes:
        members: its configurations' indices into the sweep's list.
        compile_seconds: the program's compile time.
        train_seconds: its epochs' time, compilation excluded.
        shared_key: its members shared one run key (one shuffle, the same minibatches).
    """

    members: list           # indices into the configurations
    compile_seconds: float
    train_seconds: float
    shared_key: bool


class SweepResult(NamedTuple):
    """What ``run_sweep`` returns.

    Attributes:
        runs: a ``RunResult`` per configuration, in the given order.
        groups: a ``GroupInfo`` per compiled program.
        wall_seconds: the whole sweep's wall-clock time.
    """

    runs: list              # RunResult per configuration, in the given order
    groups: list            # GroupInfo per compiled program
    wall_seconds: float


def _prepared(data, configs):
    """(x, y, x_test, y_test, num_classes, side) on the device in the configurations' dtype (float64:
    call inside ``engine.precision``). data: a ``data.Dataset``; configs: the sweep's, which must share
    their dtype and matmul precision."""
    for name in ("dtype", "matmul_precision"):  # both are set around the whole sweep
        values = {getattr(c, name) for c in configs}
        if len(values) != 1:
            raise ValueError(f"one {name} per sweep, got {sorted(values)}")
    dtype = runs.dtype_of(configs[0])
    num_classes = max(int(max(data.y_train.max(), data.y_test.max())) + 1, 10)  # as runs.fit
    labels = lambda a: jnp.asarray(np.asarray(a).astype(np.int32))  # noqa: E731  (on the host: nothing compiles)
    x = runs.prepare(data.x_train, dtype)
    y = labels(data.y_train)
    x_test = runs.prepare(data.x_test, dtype)
    y_test = labels(data.y_test)
    return x, y, x_test, y_test, num_classes, int(data.x_train.shape[1])


class SweepInterrupted(Interrupted):
    """A signal (SIGINT, SIGTERM; in any process) stopped ``run_sweep`` between two chunks, every
    process at the same one.

    Attributes:
        signum: the signal's number.
        state: the ``sweep_checkpoint.SweepState`` at the stop: ``run_sweep(configs, data, resume=err)``
            (or ``resume=state``) continues from it exactly.
        saved: the checkpoint written at the stop (``run_sweep``'s ``save``), or None.
    """


def run_sweep(configs: Sequence[TrainConfig], data, *, max_group: int | None = None, share_order: bool = False,
              on_group: Callable[[int, list[int]], None] | None = None,
              on_epoch: Callable[[int, int, np.ndarray], None] | None = None, mesh: Mesh | None = None,
              chunk_steps: int | None = None, save: str | os.PathLike | None = None, resume: Any = None,
              signals: bool = True) -> SweepResult:
    """Train and test every configuration on ``data`` (a ``data.Dataset``), one program per shape group.

    Args:
        configs: the configurations (``grid``, ``random_search``); they share dtype and matmul precision.
        data: a ``data.Dataset``.
        max_group: the most members per program, larger groups are cut (None: uncut).
        share_order: see ``groups.train_group``.
        on_group: ``on_group(group_index, member_indices)`` before a group starts (or resumes).
        on_epoch: ``on_epoch(group_index, epoch, losses (K,))`` after each of its epochs.
        mesh: None, or a mesh with a ``"members"`` axis (``parallel.make_mesh(n,
            axis=parallel.MEMBER_AXIS)``) that splits every group's members over its devices and
            processes (see ``groups.train_group``; every process calls ``run_sweep`` and gets the whole
            result, the same bits as on one device).
        chunk_steps: steps per compiled call, how soon a signal takes effect (None: a quarter epoch);
            no result depends on it.
        save: a checkpoint path (``sweep_checkpoint``), written by process 0 after every epoch and group
            and where a signal stops the sweep.
        resume: a checkpoint path, a ``SweepInterrupted`` or a ``SweepState`` of these configurations
            (and ``max_group``, ``share_order`` and data): the sweep goes on from there, on any mesh.
        signals: SIGINT and SIGTERM stop the sweep at the next chunk's end (agreed by every process)
            and raise ``SweepInterrupted`` (False: Python's default handling).

    Returns:
        A ``SweepResult``, the runs in the order of ``configs``: an interrupted and resumed sweep's are
        the unstopped sweep's, bit for bit.
    """
    if not configs:
        raise ValueError("a sweep needs at least one configuration")
    for c in configs:
        c.validate()
        check_sweepable(c)
    started = time.perf_counter()
    with engine.precision(configs[0].dtype, configs[0].matmul_precision):
        prepared = _prepared(data, configs)
        x, y, _, _, num_classes, side = prepared
        plan = group_by_shape(configs, x.shape[0], side, max_group)
        settings = {"max_group": max_group, "share_order": bool(share_order), "data": fingerprint(x, y),
                    "num_classes": num_classes, "image_side": side}
        state = sweep_checkpoint.resume_state(resume, list(configs), settings, plan, (x.shape[0], x.shape[1]))
        with contextlib.ExitStack() as stack:
            stop = _signals(stack, signals)
            sweeper = _Sweeper(list(configs), prepared, plan, dict(share_order=share_order, mesh=mesh,
                               chunk_steps=chunk_steps), save, on_group, on_epoch, stop)
            while state.group < len(plan):
                state = sweeper.run_group(state)
                _save(save, state)
                if stop is not None and state.group < len(plan):
                    signum = stop()  # a collective with several processes: every one asks here
                    if signum:
                        raise _stopped(signum, state, save)
    return _result(state, plan, time.perf_counter() - started)


def _result(state: SweepState, plan: list, wall_seconds: float) -> SweepResult:
    """The ``SweepResult`` of a finished sweep's ``state``; plan: its groups' member indices."""
    group_of = {i: g for g, members in enumerate(plan) for i in members}
    history, test, dead = (state.results[k] for k in ("history", "test", "diverged"))
    out = [RunResult(c, [float(v) for v in history[i]], float(test[i, 0]), float(test[i, 1]), bool(dead[i]),
                     group_of[i]) for i, c in enumerate(state.configs)]
    return SweepResult(out, [GroupInfo(**info) for info in state.groups], wall_seconds)


def _save(path, state: SweepState) -> None:
    """Write ``state`` to the checkpoint ``path`` (process 0 only; nothing when ``path`` is None)."""
    if path is not None and parallel.is_primary():
        sweep_checkpoint.save_sweep(path, state)


def _stopped(signum: int, state: SweepState, path) -> SweepInterrupted:
    """The exception a stop raises, ``state`` saved to ``path`` first."""
    _save(path, state)
    return SweepInterrupted(signum, state, path)


def _signals(stack: contextlib.ExitStack, signals: bool) -> Callable[[], int] | None:
    """The ``stop`` of ``train_group``: the signal every process agrees on (None: ``signals`` off)."""
    if not signals:
        return None
    caught = stack.enter_context(CaughtSignals())
    return lambda: parallel.agreed(caught.received)


def _train_saved(state: SweepState, chosen: list, prepared: tuple, options: dict, save, stop,
                 on_epoch) -> GroupResult:
    """``train_group`` of ``state``'s running group (the configurations ``chosen``), from its progress:
    saved to ``save`` after every epoch, and a stop raised as ``SweepInterrupted`` with it saved."""
    x, y, _, _, num_classes, side = prepared
    chunk = options.get("chunk_steps") or -(-engine.steps_per_epoch(x.shape[0], chosen[0].batch_size) // 4)
    keep = None if save is None else (lambda p: _save(save, state._replace(progress=p)))
    try:
        return train_group(chosen, x, y, num_classes, image_side=side, chunk_steps=chunk, resume=state.progress,
                           share_order=options["share_order"], mesh=options["mesh"],
                           divergence=options.get("divergence", True), stop=stop, on_progress=keep,
                           on_epoch=on_epoch)
    except GroupStopped as err:
        raise _stopped(err.signum, state._replace(progress=err.progress), save) from None


class _Sweeper:
    """``run_sweep``'s groups, one after another: each trained, tested and recorded in the state."""

    def __init__(self, configs: list, prepared: tuple, plan: list, options: dict, save, on_group, on_epoch, stop):
        self.configs, self.prepared, self.plan, self.options = configs, prepared, plan, options
        self.path, self.on_group, self.on_epoch, self.stop = save, on_group, on_epoch, stop

    def run_group(self, state: SweepState) -> SweepState:
        """``state`` after its group ``state.group`` trained (from its progress, if any) and was tested."""
        x_test, y_test = self.prepared[2:4]
        g, chosen = state.group, self.plan[state.group]
        if self.on_group is not None:
            self.on_group(g, chosen)
        group_configs = [self.configs[i] for i in chosen]
        res = _train_saved(state, group_configs, self.prepared, self.options, self.path, self.stop,
                           None if self.on_epoch is None else functools.partial(self.on_epoch, g))
        losses, accs, _, _ = evaluate_members(models.from_config(group_configs[0]), res.params, x_test, y_test)
        results = {k: v.copy() for k, v in state.results.items()}
        for k, i in enumerate(chosen):  # a diverged member has no test scores
            dead = bool(res.diverged[k])
            results["history"][i] = res.history[k]
            results["test"][i] = (math.nan, math.nan) if dead else (losses[k], accs[k])
            results["diverged"][i] = dead
        info = GroupInfo(list(chosen), res.compile_seconds, res.train_seconds, res.shared_key)
        return state._replace(results=results, groups=[*state.groups, info._asdict()], group=g + 1, progress=None)


class EnsembleResult(NamedTuple):
    """What ``fit_ensemble`` returns.

    Attributes:
        members: a ``RunResult`` per member (seeds ``seed``, ``seed + 1``, ...).
        ensemble_loss: mean -log of the averaged probability of the true class (NaN if all diverged).
        ensemble_accuracy: accuracy of the averaged probabilities, in [0, 1] (NaN if all diverged).
        params: the members' params, stacked (leading axis K).
        compile_seconds: the group program's compile time.
        train_seconds: the epochs' time, compilation excluded.
    """

    members: list           # RunResult per member (seeds seed, seed + 1, ...)
    ensemble_loss: float    # mean -log of the averaged probability of the true class
    ensemble_accuracy: float
    params: Any             # stacked, leading axis K
    compile_seconds: float
    train_seconds: float


def fit_ensemble(config: TrainConfig, data, members: int, *, share_order: bool = False,
                 on_epoch: Callable[[int, np.ndarray], None] | None = None, divergence: bool = True,
                 mesh: Mesh | None = None, chunk_steps: int | None = None, save: str | os.PathLike | None = None,
                 resume: Any = None, signals: bool = True) -> EnsembleResult:
    """Train ``members`` copies of ``config`` with seeds ``seed, seed + 1, ...`` together (one vmapped
    program) and test each member and their averaged-probability ensemble.

    Args:
        config: the members' configuration (their seeds count up from ``config.seed``).
        data: a ``data.Dataset``.
        members: K, the number of members.
        share_order: all members see seed ``seed``'s minibatches (see ``groups.train_group``).
        on_epoch: ``on_epoch(epoch, losses (K,))`` after each epoch.
        divergence: judge divergence by the 10x rule too (see ``groups.train_group``).
        mesh: None, or a mesh with a ``"members"`` axis to split the members over (see
            ``groups.train_group``: a count its size does not divide is padded, and the padding is in no
            result).
        chunk_steps: steps per compiled call (None: a quarter epoch), as ``run_sweep``'s.
        save: a checkpoint path written after every epoch and at a stop (a sweep checkpoint of one group).
        resume: that checkpoint's path, or the ``SweepInterrupted`` a stop raised: training goes on from it
            (a finished one is only tested).
        signals: SIGINT and SIGTERM stop training at the next chunk's end and raise ``SweepInterrupted``.

    A diverged member is reported (``RunResult.diverged``, NaN test scores) and left out of the
    ensemble, which averages the others; with every member diverged the ensemble's scores are NaN.
    """
    if members < 1:
        raise ValueError(f"fit_ensemble: members must be positive, got {members}")
    config.validate()
    check_sweepable(config)
    configs = [dataclasses.replace(config, seed=config.seed + i) for i in range(members)]
    with engine.precision(config.dtype, config.matmul_precision):
        prepared = _prepared(data, configs)
        x, y, x_test, y_test, num_classes, side = prepared
        settings = {"max_group": None, "share_order": bool(share_order), "data": fingerprint(x, y),
                    "num_classes": num_classes, "image_side": side, "ensemble": True, "divergence": bool(divergence)}
        state = sweep_checkpoint.resume_state(resume, configs, settings, [list(range(members))], x.shape[:2])
        with contextlib.ExitStack() as stack:
            options = dict(share_order=share_order, mesh=mesh, chunk_steps=chunk_steps, divergence=divergence)
            res = _train_saved(state, configs, prepared, options, save, _signals(stack, signals), on_epoch)
        return _ensemble_result(configs, res, x_test, y_test)


def _ensemble_result(configs: list, res: GroupResult, x_test, y_test) -> EnsembleResult:
    """``fit_ensemble``'s result: the trained group ``res`` of ``configs`` tested on (x_test, y_test)."""
    model, members = models.from_config(configs[0]), len(configs)
    losses, accs, ens_loss, ens_acc = evaluate_members(model, res.params, x_test, y_test)
    alive = np.flatnonzero(~res.diverged)
    if len(alive) < members:  # the ensemble of the members that did not diverge
        ens_loss = ens_acc = math.nan
        if len(alive):
            survivors = jax.tree_util.tree_map(lambda leaf: leaf[alive], res.params)
            ens_loss, ens_acc = evaluate_members(model, survivors, x_test, y_test)[2:]
    runs = [RunResult(c, [float(v) for v in res.history[k]], math.nan if res.diverged[k] else float(losses[k]),
                      math.nan if res.diverged[k] else float(accs[k]), bool(res.diverged[k]), 0)
            for k, c in enumerate(configs)]
    return EnsembleResult(runs, float(ens_loss), float(ens_acc), res.params, res.compile_seconds, res.train_seconds)


# ---------------------------------------------------------------- reporting (strings and dicts; no printing)


def _finite(v):
    """JSON has no NaN: non-finite numbers become null."""
    return float(v) if v is not None and np.isfinite(v) else None


def run_record(run: RunResult) -> dict:
    """One run as a JSON-ready dict: its ``config``, ``test_accuracy`` and the rest."""
    return {"config": run.config.to_dict(), "test_accuracy": _finite(run.test_accuracy),
            "test_loss": _finite(run.test_loss), "final_loss": _finite(run.history[-1] if run.history else None),
            "history": [_finite(v) for v in run.history], "diverged": run.diverged, "group": run.group}


def sweep_record(result: SweepResult) -> dict:
    """The sweep ``result`` as a JSON-ready dict: ``runs`` (one per configuration, best test accuracy
    first) and ``groups`` (one per compiled program, with its compile and train seconds)."""
    return {
        "runs": [run_record(r) for r in sorted_runs(result.runs)],
        "groups": [{"members": len(g.members), "config_indices": g.members, "compile_seconds": g.compile_seconds,
                    "train_seconds": g.train_seconds, "shared_shuffle": g.shared_key}
                   for g in result.groups],
        "num_configs": len(result.runs),
        "wall_seconds": result.wall_seconds,
    }


def sorted_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    """Best test accuracy first; diverged runs last."""
    return sorted(runs, key=lambda r: (r.diverged, -(r.test_accuracy if np.isfinite(r.test_accuracy) else -1)))


def varying_axes(configs: Sequence[TrainConfig]) -> list[str]:
    """The sweepable fields (``SWEEP_AXES``) that differ between ``configs``, else ``["lr"]``."""
    return [a for a in SWEEP_AXES if len({str(getattr(c, a)) for c in configs}) > 1] or ["lr"]


def _cell(config: TrainConfig, axis: str) -> str:
    v = getattr(config, axis)
    return "-".join(str(h) for h in v) if axis == "hidden" else f"{v:g}" if axis == "lr" else str(v)


def member_name(config: TrainConfig, varying: Sequence[str]) -> str:
    """``config`` named by its ``varying`` fields, as the table writes them: ``"lr 0.3, seed 2"``."""
    return ", ".join(f"{a.replace('_', ' ')} {_cell(config, a)}" for a in varying)


def format_table(runs: Sequence[RunResult], varying: Sequence[str] | None = None) -> str:
    """A text table of runs sorted by test accuracy; ``varying`` picks the config columns (default: the
    sweepable fields that differ between runs, else lr)."""
    if varying is None:
        varying = varying_axes([r.config for r in runs])
    header = ["rank", *varying, "final loss", "test acc"]
    rows = []
    for rank, r in enumerate(sorted_runs(runs), start=1):
        cells = [str(rank), *(_cell(r.config, a) for a in varying)]
        loss = r.history[-1] if r.history else float("nan")
        cells.append("diverged" if r.diverged else f"{loss:.4f}")
        cells.append("-" if r.diverged else f"{r.test_accuracy * 100:.2f}%")
        rows.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])
