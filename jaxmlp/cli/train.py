"""``jaxmlp train``: flags -> TrainConfig -> ``fit`` with handlers -> report."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from typing import Any

from jaxmlp import config as cfg

from .common import (
    CLIError,
    add_data_flags,
    add_metrics_flag,
    check_outputs,
    say,
    stopped_at,
    subcommand,
    write_metrics,
)

MODEL = ("arch", "hidden", "init", "activation", "dtype", "matmul_precision")
OPTIMIZATION = ("epochs", "batch_size", "lr", "seed", "optimizer", "momentum", "beta1", "beta2", "weight_decay",
                "l2", "schedule", "warmup_epochs", "dropout", "input_dropout", "augment", "elastic_sigma",
                "elastic_alpha", "max_norm", "val_split", "patience", "grad")
TRANSFER = ("finetune", "freeze", "new_head", "classes")
NOTEBOOK_FLAGS = ("lr", "batch_size", "epochs", "seed", "hidden", "dataset")  # what --notebook-exact accepts


def save_every(text: str) -> tuple[str, float]:
    """``--save-every``: "120s" / "5m" (seconds, minutes) or "500" (steps)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|steps?)?\s*", text)
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 300s or 5m, or a step count like 500, "
                                             f"got {text!r}")
    value, unit = float(m[1]), m[2] or "steps"
    return ("seconds", value * (60 if unit == "m" else 1)) if unit in ("s", "m") else ("steps", int(value))


def add(sub) -> None:
    p = subcommand(sub, "train", run, "train a model and report test loss and accuracy")
    add_data_flags(p)
    p.add_argument("--preset", default=None, help="a named recipe (see `jaxmlp presets`); explicit flags override it")
    cfg.add_flags(p.add_argument_group("model"), MODEL)
    cfg.add_flags(p.add_argument_group("optimization"), OPTIMIZATION)
    cfg.add_flags(p.add_argument_group("transfer learning"), TRANSFER)
    g = p.add_argument_group("the notebook's own run")
    g.add_argument("--notebook-exact", action="store_true",
                   help="reproduce the seed notebook's numbers: float64, its NumPy draws, manual backprop, its loss "
                        "formula (accepts only --lr --batch-size --epochs --seed --hidden)")
    g.add_argument("--replay-notebook-step", action="store_true",
                   help="with --notebook-exact: first replay the notebook's one test update (lr 0.01, 5 images)")
    g = p.add_argument_group("output")
    add_metrics_flag(g)
    g.add_argument("--log", metavar="FILE", default=None, help="append one JSON line per epoch (live monitoring)")
    g.add_argument("--plot-dir", metavar="DIR", default=None,
                   help="write PNGs: curves, confusion matrix, misclassified digits, first-layer weights")
    g.add_argument("--save", metavar="PATH", default=None,
                   help="checkpoint (.npz) written atomically after every epoch and where a signal stops the run")
    g.add_argument("--save-every", type=save_every, default=None, metavar="WHEN",
                   help="also save every WHEN: 300s / 5m (time) or 500 (steps), for preemptible machines")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the run saved in this checkpoint up to --epochs with its saved settings (other "
                        "flags may repeat them, not change them); bit-exact")
    g.add_argument("--manifest", metavar="FILE", default=None,
                   help="write a run manifest (config, data SHA-256, versions, device, each epoch's params hash) "
                        "that `jaxmlp verify FILE` reruns and checks bit for bit")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    g = p.add_argument_group("engine")
    g.add_argument("--chunk-steps", type=cfg.positive_int, default=None, metavar="S",
                   help="steps per compiled chunk (default: sized to take about 0.25 s, at least 16 steps on a CPU)")
    g.add_argument("--no-divergence-check", action="store_true",
                   help="stop only on non-finite values, not when the loss climbs past 10x its start")
    g = p.add_argument_group("scale")
    g.add_argument("--ensemble", type=cfg.positive_int, default=1, metavar="K",
                   help="train K models (seeds SEED..SEED+K-1) in one vmapped program and report each and their "
                        "averaged-probability ensemble; a member that diverges is reported and left out, and when "
                        "all do the run fails as a single run does (default: 1)")
    g.add_argument("--shared-order", action="store_true",
                   help="with --ensemble: every member sees the first seed's minibatches, only the initial params "
                        "differ (default: each seed its own shuffle)")
    add_scale_flags(g, "split each minibatch over N devices (with --ensemble: the members)")


def add_scale_flags(g, what: str) -> None:
    """--devices (``what`` says what it splits) and the multi-process flags, for train and sweep."""
    g.add_argument("--devices", type=cfg.positive_int, default=None, metavar="N",
                   help=f"{what} (default: 1, or every device of every process in a multi-process run)")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="multi-process run: process 0's address (with --num-processes, --process-id; under SLURM "
                        "or Open MPI, leave all three out)")
    g.add_argument("--num-processes", type=cfg.positive_int, default=None, metavar="N", help="processes in the run")
    g.add_argument("--process-id", type=cfg.nonneg_int, default=None, metavar="I", help="this process, 0..N-1")


def mesh_from_args(args, axis: str):
    """Join the multi-process run the flags (or a cluster launcher) describe, then the mesh --devices asks
    for, its one axis named ``axis`` (None: one device). Before the data: a bad flag fails fast."""
    from jaxmlp.parallel import initialize, mesh_for

    if args.coordinator or args.num_processes is not None or args.process_id is not None:
        initialize(args.coordinator, args.num_processes, args.process_id)
    return mesh_for(args.devices, axis=axis)


def given_flags(args) -> dict:
    """The TrainConfig fields given explicitly as flags."""
    return {n: getattr(args, n) for n in (*MODEL, *OPTIMIZATION, *TRANSFER) if getattr(args, n, None) is not None}


def explicit_values(args) -> dict:
    """The TrainConfig fields set by --preset and by flags given explicitly (a preset's setting that the
    flags make unused, such as its --warmup-epochs under another --schedule, is dropped)."""
    values: dict = {}
    given = given_flags(args)
    if args.preset:
        from jaxmlp.presets import preset_config
        values.update(preset_config(args.preset), preset=args.preset)
    values.update(given)
    unused = cfg.unused_settings(values)
    values = {k: v for k, v in values.items() if k in given or k not in unused}
    values["dataset"] = args.dataset
    return values


def refuse_unused(args, config: cfg.TrainConfig) -> None:
    """UsageError naming a flag given explicitly that ``config`` would not use (even at its default)."""
    unused = cfg.unused_settings(config)
    for name in given_flags(args):
        if name in unused:
            raise CLIError(cfg.ConfigError(f"TrainConfig.{name} would be ignored: {unused[name]}").flags())


def config_from_args(args) -> cfg.TrainConfig:
    """Defaults, then the preset, then explicit flags; with --finetune, the checkpoint's model."""
    values = explicit_values(args)
    if values.get("finetune"):
        from jaxmlp.runs import load_model

        saved = load_model(values["finetune"]).config
        given = given_flags(args)
        if given.get("arch", saved.arch) == saved.arch:  # another --arch: fine-tuning refuses it, naming both
            values.update({k: getattr(saved, k) for k in ("arch", "hidden", "activation") if k not in given})
    config = cfg.TrainConfig(**values)
    refuse_unused(args, config)
    return config


def resume_from(args) -> tuple[cfg.TrainConfig, Any]:
    """(config, the loaded run) from --resume: the saved run, --epochs extended; other flags must agree."""
    from jaxmlp.runs import load_run

    loaded = load_run(args.resume)
    _, state, config, meta = loaded
    given = explicit_values(args)
    epochs = given.pop("epochs", config.epochs)
    if given.get("dataset") == "mnist" and args.dataset == "mnist":
        given.pop("dataset")  # the flag's default: the checkpoint's dataset wins
    probe = cfg.TrainConfig(**{**config.to_dict(), **given})  # normalises the given values
    refuse_unused(args, probe)
    clash = [k for k in given if getattr(probe, k) != getattr(config, k)]
    if clash:
        raise CLIError(f"--resume continues {args.resume} with its saved settings; --{clash[0].replace('_', '-')} "
                       f"{given[clash[0]]} differs from the saved {getattr(config, clash[0])} (only --epochs may "
                       f"change)")
    if int(state.epoch) >= epochs:
        raise CLIError(f"--resume: {args.resume} already reached epoch {int(state.epoch)}; pass --epochs > "
                       f"{int(state.epoch)}")
    config = dataclasses.replace(config, epochs=epochs)
    return config, loaded


def _handlers(args) -> tuple[list, Any]:
    from jaxmlp import handlers
    from jaxmlp.parallel import is_primary

    saver: handlers.Checkpointer | None = None
    out: list = [handlers.ProgressReport(quiet=args.quiet)]
    if is_primary() and args.log:
        out.append(handlers.JsonlLog(args.log))
    if is_primary() and args.save:
        kind, every = args.save_every or (None, None)
        saver = handlers.Checkpointer(args.save, every if kind == "seconds" else None,
                                      every if kind == "steps" else None)
        out.append(saver)
    return [*out, handlers.SignalStop()], saver


def _describe(config: cfg.TrainConfig) -> str:
    from jaxmlp.models import from_config

    return (f"{from_config(config).describe()}, {config.optimizer} lr {config.lr:g}, batch {config.batch_size}, "
            f"{config.epochs} epochs, {config.dtype}")


def run(args) -> int:
    """Train the MLP (or CNN) in compiled chunks of steps. Defaults: the notebook's 784-128-64-10 network and its best
    experiment (SGD lr 0.1, batch 32, 10 epochs, seed 42), with He init. Ctrl-C or SIGTERM stops at the next chunk
    (within about a second), saving that step with --save.
    """
    if args.notebook_exact or args.replay_notebook_step:
        return run_notebook(args)
    if args.ensemble > 1:
        return run_ensemble(args)
    if args.shared_order:
        raise CLIError("--shared-order makes ensemble members share their minibatches; it needs --ensemble K")
    if args.save_every and not args.save:
        raise CLIError("--save-every says how often to write the checkpoint; it needs --save PATH")
    from jaxmlp.data import ensure_dataset
    from jaxmlp.parallel import DATA_AXIS

    started = time.perf_counter()
    mesh = mesh_from_args(args, DATA_AXIS)
    config, resume = resume_from(args) if args.resume else (config_from_args(args), None)
    check_outputs(args)
    if not args.quiet and sys.stderr.isatty():  # a person waiting sees at once what happens
        say(f"jaxmlp train: {_describe(config)}; loading {config.dataset}, then compiling")
    data = ensure_dataset(args.data_dir, config.dataset, progress=not args.quiet)
    _note_batch(args, config, data)
    return _train(args, config, data, resume, mesh, started)


def _train(args, config, data, resume, mesh, started) -> int:
    from jaxmlp.engine import DivergenceError, Interrupted, precision
    from jaxmlp.runs import fit

    from .reproduce import manifest_recorder, write_train_manifest

    handlers, saver = _handlers(args)
    recorder = manifest_recorder(args, handlers)
    with precision(config.dtype, config.matmul_precision):
        try:
            result = fit(config, data, handlers=handlers, resume=resume, mesh=mesh, chunk_steps=args.chunk_steps,
                         divergence=not args.no_divergence_check)
        except Interrupted as stop:
            where = stopped_at(int(stop.state.epoch), int(stop.state.step))
            kept = f"; saved in {args.save} (continue with --resume {args.save})" if saver and saver.saved else ""
            say(f"jaxmlp: interrupted by {_signal_name(stop.signum)} {where}{kept}")
            return 128 + stop.signum
        except DivergenceError as err:
            kept = f"; {args.save} keeps epoch {saver.saved[0]}" if saver and saver.saved else ""
            raise DivergenceError(f"{err}{kept}") from None
        _report(args, config, data, result, resume, mesh, started)
    from jaxmlp.parallel import device_count

    write_train_manifest(args, config, recorder, result, device_count(mesh), started)
    return 0


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _report(args, config, data, result, resume, mesh, started) -> None:
    from jaxmlp.parallel import device_count, is_primary, to_host

    print(f"Test Loss: {result.test_loss:.4f}")
    print(f"Test Accuracy: {result.test_accuracy * 100:.2f}%")
    write_metrics(args.metrics_out, {
        "config": config.to_dict(), "history": result.history, "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy, "train_seconds": result.train_seconds,
        "compile_seconds": result.compile_seconds, "wall_seconds": time.perf_counter() - started,
        "stopped_early": result.stopped_early, "devices": device_count(mesh),
        "resumed_from_epoch": len(resume.meta.get("history", [])) if resume else None})
    params = to_host(result.params)  # every process: the params may span them
    if args.plot_dir and is_primary():
        _plots(args, config, data, params, result.history, result.test_loss)


def _plots(args, config, data, params, history, test_loss: float) -> None:
    from jaxmlp.evaluation import predict_labels
    from jaxmlp.models import from_config
    from jaxmlp.plots import save_training_plots
    from jaxmlp.runs import dtype_of, prepare

    if config.classes is not None:  # fit trained and tested on the subset, relabelled
        from jaxmlp.data import select_classes
        data = select_classes(data, config.classes)
    preds = predict_labels(from_config(config), params, prepare(data.x_test, dtype_of(config)))
    paths = save_training_plots(args.plot_dir, history=history, params=params, x_test_images=data.x_test,
                                y_test=data.y_test, preds=preds,
                                class_names=None if config.classes is None else [str(c) for c in config.classes],
                                test_loss=test_loss)
    if not args.quiet:
        say(f"plots: {', '.join(str(p) for p in paths)}")


ENGINE_ONLY = ("preset", "save", "resume", "log", "plot_dir", "save_every", "devices", "coordinator", "num_processes",
               "process_id", "shared_order", "chunk_steps", "no_divergence_check", "manifest")


def _refuse(args, allowed: tuple, what: str) -> None:
    """CLIError naming the first flag given that ``what`` cannot honour."""
    fields = [n for n in (*MODEL, *OPTIMIZATION, *TRANSFER) if n not in allowed and getattr(args, n) is not None]
    given = [n for n in ENGINE_ONLY if getattr(args, n) is not None and getattr(args, n) is not False]  # 0 is given
    others = [n for n in given if n not in allowed]
    if args.ensemble > 1 and "ensemble" not in allowed:
        others.append("ensemble")
    if fields or others:
        raise CLIError(f"{what} cannot be combined with --{(fields + others)[0].replace('_', '-')}")


def run_notebook(args) -> int:
    """--notebook-exact: the seed notebook's run (jaxmlp.notebook), beside the engine."""
    from jaxmlp.data import ensure_dataset
    from jaxmlp.notebook import fit_notebook

    if not args.notebook_exact:
        raise CLIError("--replay-notebook-step replays the notebook's test update; it needs --notebook-exact")
    _refuse(args, NOTEBOOK_FLAGS + ("no_divergence_check", "manifest"), "--notebook-exact (the notebook's plain SGD)")
    check_outputs(args)
    started, d = time.perf_counter(), cfg.TrainConfig()
    settings = {k: getattr(args, k) if getattr(args, k) is not None else getattr(d, k)
                for k in ("lr", "batch_size", "epochs", "seed", "hidden")}
    settings["hidden"] = cfg.TrainConfig(hidden=settings["hidden"]).hidden  # "256" "128" -> (256, 128)
    data = ensure_dataset(args.data_dir, args.dataset, progress=not args.quiet)
    show = (lambda r: None) if args.quiet else (  # noqa: E731
        lambda r: say(f"Epoch {r['epoch']}/{settings['epochs']} - Loss: {r['loss']:.4f}"))
    if args.manifest:  # the same program, every epoch's params hashed
        from .reproduce import notebook_with_manifest
        result = notebook_with_manifest(args, data, settings, show)
    else:
        result = fit_notebook(data, **settings, replay_step=args.replay_notebook_step, on_epoch=show,
                              divergence=not args.no_divergence_check)
    print(f"Test Loss: {result.test_loss:.4f}")
    print(f"Test Accuracy: {result.test_accuracy * 100:.2f}%")
    write_metrics(args.metrics_out, {"notebook_exact": settings | {"hidden": list(settings["hidden"]),
                                                                   "replay_step": args.replay_notebook_step},
                                     "history": result.history, "test_loss": result.test_loss,
                                     "test_accuracy": result.test_accuracy,
                                     "wall_seconds": time.perf_counter() - started})
    return 0


ENSEMBLE_FLAGS = tuple(n for n in (*MODEL, *OPTIMIZATION) if n not in ("val_split", "patience")) + (
    "ensemble", "preset", "shared_order", "no_divergence_check", "devices", "coordinator", "num_processes",
    "process_id", "save", "resume", "chunk_steps")


def run_ensemble(args) -> int:
    """--ensemble K: K seeds in one vmapped program (jaxmlp.sweep.fit_ensemble), with --devices N split over N
    devices (and processes). A member that diverges is reported and left out of the ensemble; when every member
    diverged, the run fails as a single run does. Only process 0 prints and writes. --save keeps it after every
    epoch and where a signal (on any process) stops it; the same command with --resume continues it."""
    from jaxmlp.data import ensure_dataset
    from jaxmlp.engine import DivergenceError
    from jaxmlp.parallel import MEMBER_AXIS, device_count, is_primary
    from jaxmlp.sweep import SweepInterrupted, fit_ensemble, run_record

    _refuse(args, ENSEMBLE_FLAGS, "--ensemble")
    started = time.perf_counter()
    mesh = mesh_from_args(args, MEMBER_AXIS)
    check_outputs(args)
    config = config_from_args(args)
    quiet = args.quiet or not is_primary()
    data = ensure_dataset(args.data_dir, config.dataset, progress=not quiet)
    _note_batch(args, config, data)
    show = (lambda e, losses: None) if quiet else (  # noqa: E731
        lambda e, losses: say(f"Epoch {e}/{config.epochs} - Loss: " + " ".join(f"{v:.4f}" for v in losses)))
    try:
        res = fit_ensemble(config, data, args.ensemble, share_order=args.shared_order, on_epoch=show,
                           divergence=not args.no_divergence_check, mesh=mesh, chunk_steps=args.chunk_steps,
                           save=args.save, resume=args.resume)
    except SweepInterrupted as stop:
        if is_primary():
            p = stop.state.progress.state
            where = stopped_at(int(p.epoch), int(p.step))
            kept = f"; saved in {args.save} (continue with the same command and --resume {args.save})" if args.save \
                else ""
            say(f"jaxmlp: ensemble interrupted by {_signal_name(stop.signum)} {where}{kept}")
        return 128 + stop.signum
    dead = sum(m.diverged for m in res.members)
    if not is_primary():  # process 0 reports for all
        return 1 if dead == args.ensemble else 0
    for m in res.members:
        print(f"member seed {m.config.seed}: " + ("diverged" if m.diverged else
              f"Test Loss: {m.test_loss:.4f}  Test Accuracy: {m.test_accuracy * 100:.2f}%"))
    if dead == args.ensemble:
        raise DivergenceError(f"every member of the ensemble diverged (seeds {config.seed}..{config.seed + dead - 1}); "
                              f"try a lower --lr")
    left_out = f", {dead} diverged and left out" if dead else ""
    print(f"Ensemble of {args.ensemble - dead} (averaged probabilities{left_out}): Test Loss: {res.ensemble_loss:.4f}"
          f"  Test Accuracy: {res.ensemble_accuracy * 100:.2f}%")
    write_metrics(args.metrics_out, {
        "config": config.to_dict(), "ensemble": args.ensemble, "shared_order": args.shared_order,
        "members": [run_record(m) for m in res.members], "diverged": dead,
        "test_loss": res.ensemble_loss, "test_accuracy": res.ensemble_accuracy,
        "compile_seconds": res.compile_seconds, "train_seconds": res.train_seconds,
        "wall_seconds": time.perf_counter() - started, "devices": device_count(mesh)})
    return 0


def _note_batch(args, config: cfg.TrainConfig, data) -> None:
    """Say (unless --quiet) when --batch-size exceeds the examples trained on: each epoch is then one batch."""
    from jaxmlp.runs import check_split

    n = check_split(len(data.y_train), config.val_split)[0] if config.classes is None else None
    if n is not None and config.batch_size > n and not args.quiet:
        say(f"jaxmlp: note: --batch-size {config.batch_size} is more than the {n} training examples; each epoch is "
            f"one batch of {n}")
