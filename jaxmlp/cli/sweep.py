"""``jaxmlp sweep``: grid or random search, same-shape configurations trained together."""
from __future__ import annotations

import argparse
import signal

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
from .train import add_scale_flags, mesh_from_args

SHARED = ("arch", "activation", "epochs", "optimizer", "momentum", "beta1", "beta2", "weight_decay", "l2", "schedule",
          "warmup_epochs", "dropout", "input_dropout", "augment", "dtype", "matmul_precision")
# What a sweep checkpoint fixes: --resume alone takes them from it.
RESUMED = ("dataset", "lr", "hidden", "batch_size", "seed", "init", "random", "search_seed", *SHARED, "max_group",
           "shared_order")


def add(sub) -> None:
    p = subcommand(sub, "sweep", run, "grid or random search; same-shape configurations train together, vmapped")
    add_data_flags(p)
    g = p.add_argument_group("search space (each flag takes one or more values)")
    g.add_argument("--lr", type=cfg.positive_float, nargs="+", default=[0.1], metavar="LR",
                   help="learning rates (default: 0.1); with --random, drawn log-uniformly between the smallest "
                        "and largest given")
    g.add_argument("--hidden", nargs="+", action="append", default=None, metavar="N",
                   help="one architecture's hidden sizes, as in train (--hidden 256 128); repeat the flag for "
                        "several architectures (default: 128 64)")
    g.add_argument("--batch-size", type=cfg.positive_int, nargs="+", default=[32], metavar="B",
                   help="minibatch sizes (default: 32)")
    g.add_argument("--seed", type=cfg.seed_int, nargs="+", default=[42], metavar="S", help="PRNG seeds (default: 42)")
    g.add_argument("--init", choices=cfg.INIT_SCHEMES, nargs="+", default=[cfg.DEFAULT_INIT],
                   help=f"weight init schemes (default: {cfg.DEFAULT_INIT})")
    g.add_argument("--random", type=cfg.positive_int, default=None, metavar="N",
                   help="random search: N configurations drawn from the values above instead of the full grid")
    g.add_argument("--search-seed", type=cfg.seed_int, default=None,
                   help="with --random: seed of the random search (default: 0)")
    cfg.add_flags(p.add_argument_group("training (shared by every configuration)"), SHARED)
    g = p.add_argument_group("running")
    g.add_argument("--max-group", type=cfg.positive_int, default=None, metavar="K",
                   help="at most K models per compiled program (bounds memory; default: no limit)")
    g.add_argument("--shared-order", action="store_true",
                   help="members with different --seed values draw their own params but all see the first seed's "
                        "minibatches (one shuffle; off by default: each seed shuffles as its single run does)")
    add_scale_flags(g, "split every program's models over N devices (the same results as on one)")
    g.add_argument("--chunk-steps", type=cfg.positive_int, default=None, metavar="S",
                   help="steps per compiled call, how soon Ctrl-C or SIGTERM takes effect (default: a quarter "
                        "epoch); no result depends on it")
    g.add_argument("--save", metavar="PATH", default=None,
                   help="sweep checkpoint (.npz) written atomically after every epoch and where a signal stops the "
                        "sweep (process 0 writes it)")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the sweep saved in PATH, bit-exactly, on any --devices or processes: alone it "
                        "takes the saved configurations, with search or training flags they must give the same ones")
    g = p.add_argument_group("output")
    add_metrics_flag(g, "JSON: runs (config, test_accuracy, history, ...) best first, and the programs,")
    g.add_argument("--top", type=cfg.positive_int, default=None, metavar="N", help="print only the N best runs")
    g.add_argument("--plot-dir", metavar="DIR", default=None, help="write sweep.png: test accuracy per swept value")
    g.add_argument("--quiet", action="store_true", help="only the final table")
    p.set_defaults(sweep_defaults={d: p.get_default(d) for d in RESUMED})


def architectures(groups) -> list[tuple]:
    """--hidden occurrences -> architectures; a list of comma-spelled sizes in one flag gets a hint."""
    if groups is None:
        return [cfg.TrainConfig().hidden]
    out = []
    for tokens in groups:
        if len(tokens) > 1 and any("," in t for t in tokens):
            raise CLIError(f"--hidden {' '.join(tokens)}: one --hidden is one architecture; for several, repeat "
                           f"the flag (--hidden {' '.join(tokens[0].split(','))} --hidden "
                           f"{' '.join(tokens[1].split(','))})")
        try:
            out.append(cfg.hidden_sizes(tokens))
        except argparse.ArgumentTypeError as err:
            raise CLIError(f"--hidden: {err}") from None
    return out


def configs_from_args(args) -> list:
    from jaxmlp.sweep import grid, random_search

    shared = {n: getattr(args, n) for n in SHARED if getattr(args, n) is not None}
    base = cfg.TrainConfig(dataset=args.dataset, **shared)
    unused = cfg.unused_settings(base)
    for name in shared:
        if name in unused:
            raise CLIError(cfg.ConfigError(f"TrainConfig.{name} would be ignored: {unused[name]}").flags())
    axes = {"lr": args.lr, "batch_size": args.batch_size, "hidden": architectures(args.hidden), "seed": args.seed,
            "init": args.init}
    if args.random:
        lrs = axes.pop("lr")
        return random_search(base, args.random, seed=args.search_seed or 0, lr_range=(min(lrs), max(lrs)), axes=axes)
    if args.search_seed is not None:
        raise CLIError("--search-seed seeds the random search; it needs --random N")
    return grid(base, **axes)


def sweep_from_args(args) -> tuple[list, int | None, bool]:
    """(configurations, --max-group, --shared-order) of the sweep to run: from the flags, or with --resume
    alone from its checkpoint (flags given with --resume must give the saved sweep: ``run_sweep`` checks)."""
    if not args.resume:
        return configs_from_args(args), args.max_group, args.shared_order
    from pathlib import Path

    from jaxmlp.parallel import agreed, process_info
    from jaxmlp.sweep_checkpoint import check_same_configs, read_sweep

    if agreed(0 if Path(args.resume).is_file() else 1):  # every process reads it: none may be left waiting
        several = process_info()["process_count"] > 1
        where = " on every process (they all read it: a shared file system)" if several else ""
        raise CLIError(f"--resume: {args.resume} is not a file{where}")
    meta, saved = read_sweep(args.resume)
    given = {d for d in RESUMED if getattr(args, d) != args.sweep_defaults[d]}
    configs = saved
    if given - {"max_group", "shared_order"}:
        configs = configs_from_args(args)
        try:
            check_same_configs(args.resume, saved, configs)
        except ValueError as err:
            raise CLIError(f"--resume: {err} (give the saved sweep's flags, or none)") from None
    max_group = args.max_group if "max_group" in given else meta["settings"].get("max_group")
    shared = args.shared_order if "shared_order" in given else meta["settings"].get("share_order", False)
    return configs, max_group, bool(shared)


def sweep_stopped_at(state, groups) -> str:
    """Where a ``SweepState`` stopped, in words: "in group 2/3, in epoch 4 after step 10", "in group 2/3,
    after epoch 3", "after group 1/3"."""
    p = state.progress
    if p is None:
        return f"after group {state.group}/{len(groups)}"
    return f"in group {state.group + 1}/{len(groups)}, {stopped_at(int(p.state.epoch), int(p.state.step))}"


def interrupted(args, stop, groups) -> int:
    """Say (process 0) where a ``SweepInterrupted`` stopped the sweep and how to go on; the exit code."""
    from jaxmlp.parallel import is_primary

    if is_primary():
        kept = f"; saved in {args.save} (continue with --resume {args.save})" if args.save else ""
        where = sweep_stopped_at(stop.state, groups)
        say(f"jaxmlp: sweep interrupted by {signal.Signals(stop.signum).name} {where}{kept}")
    return 128 + stop.signum


class SweepProgress:
    """Group and epoch lines on stderr (the table on stdout stays clean); a member that diverges is named
    once, in the epoch it diverged."""

    def __init__(self, configs, groups, epochs: int, quiet: bool):
        from jaxmlp.sweep import varying_axes

        self.configs, self.groups, self.epochs, self.quiet = configs, groups, epochs, quiet
        self.varying, self.named = varying_axes(configs), set[int]()

    def on_group(self, g, members) -> None:
        if not self.quiet:
            from jaxmlp.models import from_config

            c = self.configs[members[0]]
            say(f"[{g + 1}/{len(self.groups)}] {from_config(c).describe()}, batch {c.batch_size}: "
                f"{len(members)} model(s) in one program")

    def on_epoch(self, g, epoch, losses) -> None:
        import numpy as np

        from jaxmlp.sweep import member_name

        if not self.quiet:
            finite = losses[np.isfinite(losses)]
            best = f"{finite.min():.4f}" if len(finite) else "nan"
            say(f"  epoch {epoch}/{self.epochs}: best loss {best}, {len(losses) - len(finite)} diverged")
            fresh = [i for i, v in zip(self.groups[g], losses) if not np.isfinite(v) and i not in self.named]
            for i in fresh:
                say(f"  diverged in epoch {epoch}: {member_name(self.configs[i], self.varying)}")
            self.named.update(fresh)


def run(args) -> int:
    """Train every combination of the values given (or --random N draws from them) and print the runs sorted by test
    accuracy. Configurations that share shapes (hidden sizes, batch size) train together as ONE compiled
    program: learning rates, seeds and init schemes are a vmapped axis. An architecture is written as in train;
    repeat --hidden for several. Example: jaxmlp sweep --lr 0.001 0.01 0.1 --hidden 128 64 --hidden 256 128
    --batch-size 32 128. A configuration that diverges (as a single run would: a non-finite loss, or one past 10x
    its start) is reported as diverged and the others go on; when every one diverges the sweep fails (exit 1).
    --devices N splits every program's models over N devices, and with --coordinator (or under SLURM) over the
    processes' devices: the table is the one-device table, digit for digit, printed and written by process 0.
    Ctrl-C or SIGTERM, on any process, stops every process after the same chunk (with --save, saved there);
    --resume PATH continues to the table an unstopped sweep prints.
    """
    from jaxmlp.data import ensure_dataset
    from jaxmlp.parallel import MEMBER_AXIS, device_count, is_primary
    from jaxmlp.sweep import SweepInterrupted, format_table, group_by_shape, run_sweep, sorted_runs, sweep_record

    mesh = mesh_from_args(args, MEMBER_AXIS)
    configs, max_group, shared_order = sweep_from_args(args)
    check_outputs(args)
    quiet = args.quiet or not is_primary()  # process 0 reports for all
    data = ensure_dataset(args.data_dir, configs[0].dataset, progress=not quiet)
    groups = group_by_shape(configs, len(data.y_train), int(data.x_train.shape[1]), max_group)
    if not quiet:
        on = f" over {device_count(mesh)} devices" if mesh is not None else ""
        say(f"{len(configs)} configurations, {len(groups)} compiled program(s){on}, {configs[0].epochs} epochs")
    progress = SweepProgress(configs, groups, configs[0].epochs, quiet)
    try:
        result = run_sweep(configs, data, max_group=max_group, share_order=shared_order, on_group=progress.on_group,
                           on_epoch=progress.on_epoch, mesh=mesh, chunk_steps=args.chunk_steps, save=args.save,
                           resume=args.resume)
    except SweepInterrupted as stop:
        return interrupted(args, stop, groups)
    if not is_primary():
        return 1 if all(r.diverged for r in result.runs) else 0
    print(format_table(sorted_runs(result.runs)[: args.top] if args.top else result.runs))
    if not args.quiet:
        compile_s = sum(g.compile_seconds for g in result.groups)
        train_s = sum(g.train_seconds for g in result.groups)
        say(f"wall {result.wall_seconds:.1f} s (compile {compile_s:.1f} s, training {train_s:.1f} s)")
    write_metrics(args.metrics_out, {**sweep_record(result), "dataset": configs[0].dataset,
                                     "devices": device_count(mesh)})
    if args.plot_dir:
        from pathlib import Path

        from jaxmlp.plots import plot_sweep

        path = plot_sweep(sweep_record(result)["runs"], Path(args.plot_dir) / "sweep.png")
        if not args.quiet:
            say(f"plot: {path}")
    if all(r.diverged for r in result.runs):
        from jaxmlp.engine import DivergenceError
        raise DivergenceError(f"every configuration diverged ({len(result.runs)} of {len(result.runs)}); try lower "
                              f"--lr values")
    return 0
