"""A sweep's checkpoint: its configurations, the finished groups' results and the running group's
progress, in one ``checkpoint.save_checkpoint`` file (pickle-free ``.npz``, written atomically).

``sweep.run_sweep(save=PATH)`` writes one after every epoch and where a signal stops the sweep, and
``run_sweep(resume=PATH)`` continues from it to the results an unstopped sweep gives, on any number of
devices or processes. Its meta holds ``kind`` (``KIND``), ``configs`` (``TrainConfig.to_dict`` each),
``settings`` (what decides the groups and their data: ``max_group``, ``share_order``, the data's
fingerprint and sizes), ``groups`` (each finished group's ``GroupInfo`` fields), ``group`` (the group
running or next) and, while a group runs, ``position`` (its epoch and step) and ``train_seconds``. Its
arrays::

    results/history    (C, epochs) float64   each configuration's epoch losses (NaN: not run, diverged)
    results/test       (C, 2) float64        test loss and accuracy (NaN until its group finished)
    results/diverged   (C,) bool
    group/...          the running group's ``groups.GroupProgress``: state, history, dead, start, losses
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from . import engine, groups, runs
from .checkpoint import CheckpointError, load_state, read_meta, save_checkpoint
from .config import TrainConfig
from .events import Interrupted
from .groups import GroupProgress

KIND = "jaxmlp-sweep/1"


class SweepState(NamedTuple):
    """Where a sweep stands: what its checkpoint holds and ``run_sweep(resume=...)`` continues from.

    Attributes:
        configs: the sweep's C configurations, in the given order.
        settings: ``{"max_group", "share_order", "data", ...}``: what must not change on resuming.
        results: ``{"history": (C, epochs), "test": (C, 2), "diverged": (C,)}`` NumPy arrays.
        groups: the finished groups' ``GroupInfo`` fields, as dicts.
        group: the index of the group running, or next to run.
        progress: the running group's ``GroupProgress``, or None between groups.
    """

    configs: list
    settings: dict
    results: dict
    groups: list
    group: int
    progress: GroupProgress | None


def fresh(configs: list, settings: dict) -> SweepState:
    """The ``SweepState`` of a sweep that has not started. configs: its C configurations; settings: as
    ``SweepState.settings``."""
    c, epochs = len(configs), configs[0].epochs
    results = {"history": np.full((c, epochs), np.nan), "test": np.full((c, 2), np.nan),
               "diverged": np.zeros(c, bool)}
    return SweepState(list(configs), dict(settings), results, [], 0, None)


def save_sweep(path: str | os.PathLike, state: SweepState) -> Path:
    """Atomically write ``state`` to ``path`` (see the module docstring). Returns the path written.

    Args:
        path: the checkpoint file.
        state: the sweep's ``SweepState``; its progress's arrays may live on a device.
    """
    tree: dict[str, Any] = {"results": state.results}
    meta: dict[str, Any] = {"kind": KIND, "configs": [c.to_dict() for c in state.configs],
                            "settings": state.settings, "groups": state.groups, "group": state.group}
    p = state.progress
    if p is not None:
        host = jax.device_get(p.state)
        tree["group"] = {"state": host, "history": p.history, "dead": p.dead, "start": p.start,
                         "losses": p.losses}
        meta.update(position=[int(host.epoch), int(host.step)], train_seconds=float(p.train_seconds))
    return save_checkpoint(path, tree, meta)


def read_sweep(path: str | os.PathLike) -> tuple[dict, list]:
    """(meta, configs) of the sweep checkpoint at ``path``; CheckpointError naming the file when it is
    not one (a training run's checkpoint, another format) or its fields are malformed.

    Args:
        path: the checkpoint file.
    """
    meta = read_meta(path)
    if meta.get("kind") != KIND:
        what = "a training run's checkpoint" if "config" in meta else f"kind {meta.get('kind')!r}"
        raise CheckpointError(f"{path}: not a sweep checkpoint ({what}; expected kind {KIND!r})")
    configs = meta.get("configs")
    if not isinstance(configs, list) or not configs:
        raise CheckpointError(f"{path}: meta 'configs' must be a non-empty list")
    try:
        parsed = [TrainConfig.from_dict(c, f"{path}: configs[{i}]") for i, c in enumerate(configs)]
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    group, groups, settings = meta.get("group"), meta.get("groups"), meta.get("settings")
    position = meta.get("position", [0, 0])
    if (not isinstance(group, int) or isinstance(group, bool) or group < 0 or not isinstance(groups, list)
            or not isinstance(settings, dict) or not isinstance(position, list) or len(position) != 2
            or not all(isinstance(v, int) and v >= 0 for v in position)):
        raise CheckpointError(f"{path}: meta 'group' must be a non-negative integer, 'groups' a list, 'settings' "
                              f"an object and 'position' two non-negative integers")
    _check_fields(path, groups, settings)
    return meta, parsed


GROUP_FIELDS: dict[str, Any] = {"members": list, "compile_seconds": (int, float), "train_seconds": (int, float),
                                "shared_key": bool}
SETTING_FIELDS: dict[str, type] = {"num_classes": int, "image_side": int, "share_order": bool, "data": dict}


def _check_fields(path, groups: list, settings: dict) -> None:
    """CheckpointError unless every finished group names exactly ``GROUP_FIELDS`` and the settings hold
    ``SETTING_FIELDS``, each of its type."""
    for i, info in enumerate(groups):
        if not (isinstance(info, dict) and set(info) == set(GROUP_FIELDS)
                and all(isinstance(info[k], t) for k, t in GROUP_FIELDS.items())):
            raise CheckpointError(f"{path}: meta 'groups'[{i}] must be an object of {sorted(GROUP_FIELDS)}")
    for name, kind in SETTING_FIELDS.items():
        if not isinstance(settings.get(name), kind) or isinstance(settings.get(name), bool) is not (kind is bool):
            raise CheckpointError(f"{path}: meta 'settings' needs {name} ({kind.__name__})")


def load_sweep(path: str | os.PathLike,
               progress_shapes: Callable[[SweepState], GroupProgress]) -> SweepState:
    """The ``SweepState`` saved at ``path``.

    Args:
        path: the checkpoint file.
        progress_shapes: given the state read so far (its ``progress`` None), the running group's
            ``GroupProgress`` as shapes (``groups.progress_shapes``): every saved array must match it.

    Returns:
        The state, its arrays as NumPy arrays (the progress's state as jax arrays). CheckpointError
        naming the file and the member when the file does not hold what the shapes say.
    """
    meta, configs = read_sweep(path)
    c, epochs = len(configs), configs[0].epochs
    f64 = np.dtype("float64")
    template: dict[str, Any] = {"results": {
        "history": jax.ShapeDtypeStruct((c, epochs), f64), "test": jax.ShapeDtypeStruct((c, 2), f64),
        "diverged": jax.ShapeDtypeStruct((c,), np.dtype(bool))}}
    partial = SweepState(configs, meta["settings"], {}, meta["groups"], meta["group"], None)
    running = "position" in meta
    if running:
        shapes = progress_shapes(partial)
        template["group"] = {"state": shapes.state, "history": shapes.history, "dead": shapes.dead,
                             "start": shapes.start, "losses": shapes.losses}
    tree = load_state(path, template)
    results = {k: np.asarray(v) for k, v in tree["results"].items()}
    progress = None
    if running:
        g = tree["group"]
        epoch, step = meta["position"]
        if (int(g["state"].epoch), int(g["state"].step)) != (epoch, step):
            raise CheckpointError(f"{path}: meta 'position' {meta['position']} disagrees with the saved state's "
                                  f"epoch and step")
        progress = GroupProgress(g["state"], np.asarray(g["history"]), np.asarray(g["dead"]),
                                 np.asarray(g["start"]), np.asarray(g["losses"]), float(meta.get("train_seconds", 0)))
    return partial._replace(results=results, progress=progress)


def resume_state(resume: Any, configs: list, settings: dict, plan: list, data_shape: tuple[int, int]) -> SweepState:
    """The ``SweepState`` a sweep starts from: a fresh one, or ``resume``'s once its configurations and
    settings are these (ValueError naming the first difference).

    Args:
        resume: None, a checkpoint's path, the ``Interrupted`` a stopped sweep raised, or a ``SweepState``.
        configs: the sweep's configurations.
        settings: its ``SweepState.settings``.
        plan: its groups (``sweep.group_by_shape``), lists of indices into ``configs``.
        data_shape: (N, D) of its training inputs.
    """
    if resume is None:
        return fresh(configs, settings)
    if isinstance(resume, Interrupted) and isinstance(resume.state, SweepState):
        resume = resume.state
    if isinstance(resume, (str, os.PathLike)):
        meta, saved = read_sweep(resume)
        _check_same(str(resume), saved, settings, meta["settings"], configs)
        return load_sweep(resume, lambda partial: _progress_shapes(partial, plan, data_shape))
    if not isinstance(resume, SweepState):
        raise ValueError(f"resume: expected a sweep checkpoint's path, a SweepInterrupted or a SweepState, got "
                         f"{type(resume).__name__}")
    _check_same("resume", resume.configs, settings, resume.settings, configs)
    return resume


def check_same_configs(where: str | os.PathLike, saved: list, configs: list) -> None:
    """ValueError naming the first difference between a saved sweep's configurations and ``configs``.

    Args:
        where: the checkpoint (named in the message).
        saved: its configurations (``read_sweep``).
        configs: the sweep's.
    """
    if len(saved) != len(configs):
        raise ValueError(f"{where}: holds {len(saved)} configurations, the given run {len(configs)}")
    for i, (a, b) in enumerate(zip(saved, configs)):
        was, now = a.to_dict(), b.to_dict()
        for name in now:
            if was.get(name) != now[name]:
                raise ValueError(f"{where}: configuration {i} has {name} {was.get(name)!r}, the given one "
                                 f"{now[name]!r}; a resumed run must be the saved one")


def _check_same(where: str, saved: list, settings: dict, saved_settings: dict, configs: list) -> None:
    """ValueError naming the first difference between a saved sweep and this one."""
    check_same_configs(where, saved, configs)
    for name in ("ensemble", "max_group", "share_order", "divergence", "data"):
        if saved_settings.get(name) != settings.get(name):
            raise ValueError(f"{where}: was saved with {name} {saved_settings.get(name)!r}, this run has "
                             f"{settings.get(name)!r}; a resumed run must be the saved one")


def _progress_shapes(partial: SweepState, plan: list, data_shape: tuple[int, int]):
    """The running group's ``GroupProgress`` shapes of a sweep saved at ``partial.group``."""
    if partial.group >= len(plan):
        raise CheckpointError(f"the checkpoint's running group {partial.group} is not one of the sweep's {len(plan)}")
    n, input_dim = data_shape
    chosen = [partial.configs[i] for i in plan[partial.group]]
    spec = runs.spec_for(chosen[0], n, partial.settings["image_side"])
    shared = partial.settings["share_order"] or len({c.seed for c in chosen}) == 1
    return groups.progress_shapes(chosen, input_dim, partial.settings["num_classes"], spec, shared,
                           engine.steps_per_epoch(n, spec.batch_size))
