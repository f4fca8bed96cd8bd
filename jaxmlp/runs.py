"""Runs described by a ``TrainConfig``: the built-in MLP and CNN on the engine, as the CLI trains them.

* ``spec.TrainSpec`` (re-exported here): the static part of a configured step, on the engine's step
  protocol; the numbers travel beside it as traced ``hparams``.
* ``setup`` / ``fit``: data to the device, params (fresh, fine-tuned or resumed), the compiled chunk,
  then ``engine.advance`` with the checks (finiteness, divergence, early stopping) and the caller's
  handlers; then the test set.
* ``load_run`` / ``load_model``: checkpoints restored against the template their config implies.
"""
from __future__ import annotations

import functools
import math
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import models
from .config import TrainConfig, hparams
from .engine import (
    DivergenceError,
    EndPartial,
    Interrupted,
    Run,
    TrainState,
    advance,
    build_run,
    compile_aside,
    init_state,
    precision,
    run_chunk,
    steps_per_epoch,
)
from .evaluation import _eval_chunk_jit, evaluate
from .memory import check_fits
from .model import Params
from .parallel import to_host
from .run_state import (  # noqa: F401  (re-exported: runs.dtype_of, runs.init_model, ... as before)
    check_split,
    dtype_of,
    init_model,
    init_scheme,
    param_count,
    param_dtype,
    prepare,
    split_validation,
    state_template,
)
from .spec import TrainSpec, make_optimizer, spec_for, value_and_grad_fn  # noqa: F401  (re-exported)

__all__ = ["fit", "FitResult", "setup", "load_run", "load_model", "precision", "DivergenceError", "Interrupted",
           "Prepared", "LoadedRun", "LoadedModel"]


# ---------------------------------------------------------------- setting a run up


def _num_classes(config: TrainConfig, data) -> int:
    if config.classes is not None:
        return len(config.classes)
    return max(int(max(data.y_train.max(), data.y_test.max())) + 1, 10)


def _start_params(config, key, input_dim, num_classes):
    if config.finetune:
        return finetune_params(config, key, input_dim, num_classes)
    return init_model(config, key, input_dim, num_classes)


def _data_shapes(n: int, input_dim: int, dtype) -> tuple:
    """Shapes of the chunk's (order, x, y) for ``n`` training examples of ``input_dim`` features."""
    return (jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n, input_dim), dtype),
            jax.ShapeDtypeStruct((n,), jnp.int32))


def _arrays(config: TrainConfig, data, dtype):
    """(x, y, x_val, y_val, x_test, y_test) on the device, the validation split held out."""
    train_idx, val_idx = np.arange(len(data.y_train)), np.arange(0)
    if config.val_split:
        train_idx, val_idx = split_validation(len(data.y_train), config.val_split, config.seed)
    as_labels = lambda a: jnp.asarray(np.asarray(a).astype(np.int32))  # noqa: E731
    val = (prepare(data.x_train[val_idx], dtype), as_labels(data.y_train[val_idx])) if len(val_idx) else (None, None)
    return (prepare(data.x_train[train_idx], dtype), as_labels(data.y_train[train_idx]), *val,
            prepare(data.x_test, dtype), as_labels(data.y_test))


class Prepared(NamedTuple):
    """The arrays of a configured run on the device; the test set stays apart from the ``Run``.

    Attributes:
        x_test: (N_test, D) test inputs, in the run's dtype.
        y_test: (N_test,) int32 test labels (relabelled 0..k-1 under ``classes``).
        num_classes: the model's number of outputs.
    """

    x_test: jax.Array
    y_test: jax.Array
    num_classes: int


def setup(config: TrainConfig, data, state: TrainState | None = None,
          mesh: Any = None) -> tuple[Run, TrainState, Prepared]:
    """The ``Run``, the starting state (``state`` to resume; else fresh or fine-tuned params) and the
    test arrays.

    The chunk program compiles on a second thread from shapes alone while this one copies the data
    to the device (``engine.compile_aside``), so a cold start's largest compile overlaps the rest. Call
    it inside
    ``precision(config.dtype, config.matmul_precision)``, as ``fit`` does.

    Args:
        config: the run's ``TrainConfig``.
        data: a ``data.Dataset`` of uint8 images and integer labels.
        state: a ``TrainState`` to resume from (None: fresh or, with ``config.finetune``, fine-tuned params).
        mesh: None, or a ``jax.sharding.Mesh`` to split every minibatch over its devices.

    Returns:
        ``(run, state, test)``: the ``Run``, the starting state placed for it, and the ``Prepared`` test
        arrays.
    """
    from .checks import check_dataset, check_state

    data = check_dataset(data)  # values, on the host, before any work
    if config.classes is not None:
        from .data import select_classes
        data = select_classes(data, config.classes)
    dtype, num_classes = dtype_of(config), _num_classes(config, data)
    input_dim = int(np.prod(data.x_train.shape[1:]))
    n = check_split(len(data.y_train), config.val_split)[0]
    if state is not None:
        check_state(state, state_template(config, input_dim, num_classes))
    check_fits(config, len(data.y_train), input_dim, num_classes, len(data.y_test),
               params=param_count(config, input_dim, num_classes))  # refuse before any work
    spec, hp = spec_for(config, n, int(data.x_train.shape[1])), hparams(config, dtype)
    capacity = steps_per_epoch(n, config.batch_size)
    if state is None:
        init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
        state = init_state(_start_params(config, init_key, input_dim, num_classes), make_optimizer(spec, hp), run_key)
    # The chunk compiles from shapes on a second thread while this one copies the data and compiles the
    # test program, so a cold start's largest compile overlaps the rest (a mesh's placements are known
    # only once the data is distributed: build_run compiles those itself).
    pending = None if mesh is not None else compile_aside(
        run_chunk, {"spec": spec, "capacity": capacity}, jax.eval_shape(lambda s: s, state),
        *_data_shapes(n, input_dim, dtype), hp, jax.ShapeDtypeStruct((), jnp.int32))
    x, y, x_val, y_val, x_test, y_test = _arrays(config, data, dtype)
    extra: dict[str, Any] = dict(loss_floor=math.log(num_classes), config=config,
                 validate=None if x_val is None else functools.partial(_validate, x_val, y_val, config),
                 save=functools.partial(_save, config, int(x.shape[1]), num_classes, capacity))
    if pending is not None:
        chunk_size = min(spec.model.eval_chunk, x_test.shape[0])
        _eval_chunk_jit(spec.model, state.params, x_test[:chunk_size], y_test[:chunk_size])
    run, state = build_run(spec, state, x, y, config.epochs, hp, mesh=mesh,
                           compiled=None if pending is None else pending.result(), **extra)
    return run, state, Prepared(x_test, y_test, num_classes)


def _validate(x_val, y_val, config: TrainConfig, params) -> dict:
    loss_value, acc = evaluate(models.from_config(config), params, x_val, y_val)
    return {"val_loss": loss_value, "val_accuracy": acc}


def finetune_params(config: TrainConfig, key: jax.Array, input_dim: int, num_classes: int) -> Params:
    """The params of checkpoint ``config.finetune`` in the run's dtype; with ``config.new_head`` the
    output layer is replaced by a fresh ``num_classes``-way one drawn from ``key``. ValueError (naming
    ``TrainConfig.finetune``) when the model does not fit the config or the data."""
    from .transfer import replace_head

    path = config.finetune
    saved, params, _, meta = load_model(path)
    mismatch = models.finetune_mismatch(saved, models.from_config(config))
    if mismatch:
        raise ValueError(f"TrainConfig.finetune: {path} {mismatch}")
    if meta["input_dim"] != input_dim:
        raise ValueError(f"TrainConfig.finetune: {path} takes {meta['input_dim']} inputs, the data has {input_dim}")
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype_of(config)), params)
    if config.new_head:
        return replace_head(key, params, num_classes, scheme="he" if config.init == "notebook" else config.init)
    if meta["num_classes"] != num_classes:
        raise ValueError(f"TrainConfig.finetune: {path} has {meta['num_classes']} outputs but the data has "
                         f"{num_classes} classes; add TrainConfig.new_head")
    return params


# ---------------------------------------------------------------- checkpoints of runs


def run_meta(config: TrainConfig, input_dim: int, num_classes: int, history: list,
             partial: dict | None = None) -> dict:
    """What a checkpoint stores beside the state: enough to rebuild its template and continue."""
    return {"config": config.to_dict(), "model": models.to_dict(models.from_config(config)), "history": history,
            "input_dim": int(input_dim), "num_classes": int(num_classes), "partial": partial or {}}


def _checked_meta(path, meta: dict) -> tuple[TrainConfig, Any, dict]:
    """(config, model, meta) of a checkpoint's meta: the model it stores (older checkpoints: the one
    its config describes), which must be the one its config trains."""
    from .checkpoint import CheckpointError

    if "config" not in meta and "history" in meta:  # what jaxmlp.train writes: any params, no TrainConfig
        raise CheckpointError(f"{path}: a checkpoint of jaxmlp.train holds no TrainConfig; read its params with "
                              f"jaxmlp.load_params(path)")
    try:
        config = TrainConfig.from_dict(meta.get("config"), where=f"{path}: config")  # type: ignore[arg-type]
        model = models.from_config(config)
        for name in ("input_dim", "num_classes"):
            if not isinstance(meta.get(name), int) or not 0 < meta[name] <= 1 << 20:
                raise ValueError(f"{path}: meta {name!r} must be a positive integer, got {meta.get(name)!r}")
        if not isinstance(meta.get("history", []), list) or not isinstance(meta.get("partial", {}), dict):
            raise ValueError(f"{path}: meta 'history' must be a list and 'partial' an object")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return config, model, meta


class LoadedRun(NamedTuple):
    """A run's checkpoint, restored (``load_run``).

    Attributes:
        model: the model value it trains (``jaxmlp.MLP(...)``, ``jaxmlp.CNN()``).
        state: the whole ``TrainState`` (params, optimizer state, key, epoch, step).
        config: the run's ``TrainConfig``.
        meta: the rest of what was saved: history, partial epoch, input_dim, num_classes.
    """

    model: Any
    state: TrainState
    config: TrainConfig
    meta: dict


class LoadedModel(NamedTuple):
    """A trained model from a checkpoint (``load_model``): score it with ``evaluate(model, params, ...)``.

    Attributes:
        model: the model value that was trained.
        params: its params.
        config: the run's ``TrainConfig``.
        meta: the rest of what was saved.
    """

    model: Any
    params: Params
    config: TrainConfig
    meta: dict


def load_run(path) -> LoadedRun:
    """The checkpoint at ``path`` from ``jaxmlp train --save`` (or ``fit`` with a ``Checkpointer``),
    restored strictly against the template its config implies (a float64 run's arrays come back as
    float64).

    Args:
        path: the checkpoint file.

    Returns:
        ``LoadedRun(model, state, config, meta)``.
    """
    from .checkpoint import CheckpointError, load_state, read_meta

    config, model, meta = _checked_meta(path, read_meta(path))
    template = state_template(config, meta["input_dim"], meta["num_classes"])
    with precision(config.dtype):
        state = load_state(path, template)
    if not 0 <= int(state.epoch) <= config.epochs or not 0 <= int(state.step) < meta.get("steps_per_epoch", 1 << 31):
        raise CheckpointError(f"{path}: member 'state/epoch' or 'state/step' is out of range")
    try:  # after the arrays: a config edited to another model is named by the member that disagrees
        if "model" in meta and models.from_dict(meta["model"]) != model:
            raise ValueError(f"meta 'model' {meta['model']} is not the model its config trains")
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return LoadedRun(model, state, config, meta)


def load_model(path) -> LoadedModel:
    """The trained model of the checkpoint at ``path``, for evaluation, prediction and fine-tuning.

    Args:
        path: the checkpoint file.

    Returns:
        ``LoadedModel(model, params, config, meta)``.
    """
    from .handlers import best_params

    model, state, config, meta = load_run(path)  # an early-stopped run's model: its best epoch's params
    return LoadedModel(model, best_params(path, meta, state.params), config, meta)


def _save(config: TrainConfig, input_dim: int, num_classes: int, steps: int, path, state: TrainState,
          history: list, partial: dict | None = None):
    """Atomically write ``state`` and the run's meta to ``path`` (``checkpoint.save_checkpoint``)."""
    from .checkpoint import save_checkpoint

    meta = {**run_meta(config, input_dim, num_classes, history, partial), "steps_per_epoch": steps}
    return save_checkpoint(path, to_host(state), meta)


# ---------------------------------------------------------------- fit


class FitResult(NamedTuple):
    """What ``fit`` returns: the trained model, its state and history, and its test scores.

    Attributes:
        params: the model's params: the best validation epoch's under early stopping, else the final ones.
        opt_state: the final optimizer state.
        state: the whole final ``TrainState``.
        history: one record per epoch: ``{"epoch", "loss", "seconds"}`` (and "val_loss", "val_accuracy").
        test_loss: mean cross-entropy of ``params`` on the test set.
        test_accuracy: accuracy of ``params`` on the test set, a fraction in [0, 1].
        train_seconds: wall time of this call's epochs, compilation excluded.
        compile_seconds: the time spent compiling the chunk program.
        stopped_early: whether early stopping ended the run.
    """

    params: Params
    opt_state: Any
    state: TrainState
    history: list           # [{"epoch", "loss", "seconds", (val_loss, val_accuracy)}]
    test_loss: float
    test_accuracy: float    # a fraction in [0, 1]
    train_seconds: float    # chunks only, compilation excluded
    compile_seconds: float
    stopped_early: bool


def fit(config: TrainConfig, data, *, handlers: Sequence[Callable] = (), resume: Any = None,
        mesh: Any = None, chunk_steps: int | None = None, divergence: bool = True) -> FitResult:
    """Train ``config`` on ``data`` (a ``data.Dataset`` of uint8 arrays) and test it: the command line's
    path, a thin layer over the engine (``engine.advance``, the loop ``jaxmlp.train`` runs too).

    Args:
        config: the run's ``TrainConfig``.
        data: a ``data.Dataset`` of uint8 images and integer labels.
        handlers: callables given an ``Event`` around every chunk (see ``handlers.py``); the finiteness
            and divergence checks and early stopping come first.
        resume: a run to continue exactly: a checkpoint's path, its ``load_run``, or the ``Interrupted``
            a signal stop raised (a bare ``TrainState`` continues without its history). A checkpoint's
            settings must be ``config``'s (only ``epochs`` may grow).
        mesh: a ``jax.sharding.Mesh`` (``parallel.make_mesh``) to split every minibatch over its devices.
        chunk_steps: steps per compiled chunk (None: sized to take about a quarter second).
        divergence: stop when the loss passes 10x its start (False: on non-finite values only).

    Returns:
        A ``FitResult``. A signal stop raises ``Interrupted`` (carrying the state, history and partial
        epoch) after the handlers saw the "end" event; divergence raises ``DivergenceError``.
    """
    from .handlers import EarlyStopping, default_checks, keep_best

    resume = _resume_parts(resume, config)
    with precision(config.dtype, config.matmul_precision):
        run, state, test = setup(config, data, resume.get("state"), mesh)
        early, end = EarlyStopping(config.patience), EndPartial()
        state, history, reason = advance(run, state, [*default_checks(divergence), *keep_best(early, handlers), end],
                                         history=resume.get("history", ()), partial=resume.get("partial"),
                                         chunk_steps=chunk_steps)
        if reason.startswith("SIG"):
            raise Interrupted(int(signal.Signals[reason]), state, meta={"history": history, "partial": end.partial})
        params = early.best_params if early.best_params is not None else state.params
        test_loss, test_acc = evaluate(run.spec.model, params, test.x_test, test.y_test)
    train_seconds = sum(r["seconds"] for r in history[len(resume.get("history", ())):])
    return FitResult(params, state.opt_state, state, history, test_loss, test_acc, train_seconds,
                     run.compile_seconds, reason == "early-stop")


def _resume_parts(resume: Any, config: TrainConfig) -> dict:
    """{"state", "history", "partial"} of ``fit``'s ``resume`` (a path, a ``LoadedRun``, an
    ``Interrupted`` or a bare ``TrainState``); ValueError when the checkpoint's settings are not
    ``config``'s."""
    if resume is None:
        return {}
    if isinstance(resume, Interrupted):
        return {"state": resume.state, "history": resume.history, "partial": resume.partial}
    if isinstance(resume, TrainState):  # a state alone: no history or partial epoch to continue
        return {"state": resume}
    if isinstance(resume, (str, os.PathLike)):
        resume = load_run(resume)
    if not isinstance(resume, LoadedRun):
        raise ValueError(f"resume: expected a checkpoint path, a load_run result, an Interrupted or a TrainState, "
                         f"got {type(resume).__name__}")
    changed = [k for k, v in resume.config.to_dict().items() if k != "epochs" and v != config.to_dict()[k]]
    if changed:
        raise ValueError(f"resume: the checkpoint was trained with TrainConfig.{changed[0]} "
                         f"{resume.config.to_dict()[changed[0]]!r}, config has {config.to_dict()[changed[0]]!r} "
                         f"(only TrainConfig.epochs may change)")
    return {"state": resume.state, "history": resume.meta.get("history", []),
            "partial": resume.meta.get("partial", {})}

