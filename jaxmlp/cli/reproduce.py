"""``jaxmlp reproduce`` (published tables, paper against jaxmlp) and ``jaxmlp verify`` (rerun a manifest);
and the manifest that ``jaxmlp train --manifest FILE`` writes."""
from __future__ import annotations

import time

from .common import CLIError, say, subcommand


def add_reproduce(sub) -> None:
    p = subcommand(sub, "reproduce", run_reproduce, "train a published table's rows and compare with the paper")
    p.add_argument("table", nargs="?", default=None, metavar="TABLE",
                   help="seed, lecun1998, simard2003 or dropout2014 (see --list)")
    p.add_argument("--list", action="store_true", help="show the tables, their rows, recipes and expected times")
    p.add_argument("--rows", nargs="+", default=None, metavar="ID", help="only these rows (ids from --list)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write TABLE.md, TABLE.json (every row) and manifests/TABLE-ID.json; rows finished there "
                        "before with the same recipe are not trained again")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with MNIST's four IDX files (default: $JAXMLP_DATA_DIR, else the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def add_verify(sub) -> None:
    p = subcommand(sub, "verify", run_verify, "rerun a run manifest and check every epoch's params bit for bit")
    p.add_argument("manifest", metavar="FILE", help="a manifest from `jaxmlp train --manifest` or `jaxmlp reproduce`")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="the data folder (default: $JAXMLP_DATA_DIR, else the cache); its files must hash as the "
                        "manifest records")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_reproduce(args) -> int:
    """Train the rows of a published table (each a recipe of this library: the paper's network and
    distortion) and print paper against jaxmlp as a Markdown table on stdout, with a progress line per row on
    stderr. --out DIR keeps the table, a JSON of every row and each row's run manifest, and skips rows
    finished there before.
    """
    from jaxmlp import reproduce

    if args.list:
        print(reproduce.list_tables(args.table))
        return 0
    if args.table is None:
        raise CLIError("reproduce: name a table (seed, lecun1998, simard2003, dropout2014) or pass --list")
    table = reproduce.table_by_name(args.table)
    rows = reproduce.select_rows(table, args.rows)
    if args.out:
        from jaxmlp.fileio import check_writable
        check_writable(args.out, "--out", folder=True)
    from jaxmlp.data import ensure_dataset

    data = ensure_dataset(args.data_dir, "mnist", progress=not args.quiet)
    started = time.perf_counter()
    records = reproduce.run_table(table, rows, data, data_dir=args.data_dir, out=args.out,
                                  say=(lambda text: None) if args.quiet else say)
    print(reproduce.markdown_table(table, records), end="")
    if not args.quiet:
        say(f"reproduce {table.name}: {len(records)} rows in {time.perf_counter() - started:.0f} s (wall)"
            + (f"; written to {args.out}" if args.out else ""))
    return 0


def run_verify(args) -> int:
    """Rerun the run a manifest records (same config, data and seed) and compare the hash of the params after
    every epoch. Prints that every epoch's params are bit-identical (exit 0), or the first epoch that differs and
    what in the environment (versions, backend, device, CPU, XLA flags) differs from the manifest's (exit 1).
    The data must hash as the manifest says.
    """
    from jaxmlp.manifest import verify

    def show(record):
        say(f"epoch {record['epoch']}: loss {record['loss']:.4f}, params {record['params_sha256'][:12]}")

    report = verify(args.manifest, args.data_dir, on_record=None if args.quiet else show)
    if report.identical:
        print(f"verified: every epoch's params are bit-identical to {args.manifest} ({report.checked} epochs)")
        if report.environment:
            print("environment differences (harmless here): " + "; ".join(report.environment))
        return 0
    want, got = report.difference  # type: ignore[misc]
    if got is None:
        print(f"differs: the rerun ended before epoch {want['epoch']}, which {args.manifest} records")
    else:
        print(f"differs: epoch {want['epoch']} is the first whose params differ: SHA-256 {got['params_sha256'][:16]} "
              f"(manifest {want['params_sha256'][:16]}), loss {got['loss']:.6g} (manifest {want.get('loss', 0):.6g})")
    print("environment differences: " + "; ".join(report.environment) if report.environment
          else "environment: the same as the manifest's (versions, backend, device, CPU, XLA flags)")
    return 1


# ---------------------------------------------------------------- train --manifest


def manifest_recorder(args, handlers: list):
    """With --manifest: an ``EpochRecorder`` put first among ``handlers`` (returned); else None."""
    if not getattr(args, "manifest", None):
        return None
    from jaxmlp.fileio import check_writable
    from jaxmlp.manifest import EpochRecorder

    check_writable(args.manifest, "--manifest")
    recorder = EpochRecorder()
    handlers.insert(0, recorder)
    return recorder


def write_train_manifest(args, config, recorder, result, devices: int, started: float) -> None:
    """The manifest of a finished ``jaxmlp train`` run (process 0 only)."""
    from jaxmlp.manifest import build_manifest, data_record, write_manifest
    from jaxmlp.parallel import is_primary

    if recorder is None or not is_primary():
        return
    m = build_manifest("train", config.to_dict(), config.seed, data_record(args.data_dir, config.dataset),
                       recorder.epochs, {"test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
                                         "wall_seconds": time.perf_counter() - started},
                       divergence_rule=not args.no_divergence_check, devices=devices)
    write_manifest(args.manifest, m)


def notebook_with_manifest(args, data, settings: dict, show):
    """``--notebook-exact --manifest FILE``: the notebook's run (``reproduce.fit_notebook_group`` with one lr:
    ``fit_notebook``'s own program) with every epoch's params hashed; writes the manifest, returns the result."""
    from jaxmlp.fileio import check_writable
    from jaxmlp.manifest import EpochRecorder, build_manifest, data_record, write_manifest
    from jaxmlp.reproduce import fit_notebook_group

    check_writable(args.manifest, "--manifest")
    recorder, started = EpochRecorder(), time.perf_counter()

    def on_epoch(epoch, params, records):
        recorder.add(epoch, params[0], records[0]["loss"])
        show(records[0])

    result = fit_notebook_group(data, [settings["lr"]], **{k: v for k, v in settings.items() if k != "lr"},
                                replay_step=args.replay_notebook_step, on_epoch=on_epoch,
                                divergence=not args.no_divergence_check)[0]
    config = {**settings, "hidden": list(settings["hidden"]), "dataset": args.dataset,
              "replay_step": bool(args.replay_notebook_step)}
    write_manifest(args.manifest, build_manifest(
        "notebook", config, settings["seed"], data_record(args.data_dir, args.dataset), recorder.epochs,
        {"test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
         "wall_seconds": time.perf_counter() - started}, group=[settings["lr"]]))
    return result
