"""A sharded sweep at several device counts: its cost per model-epoch and its memory a device.

The bench's lr sweep (``jax_rows.time_sharded_sweep``: one seed, K learning rates, the members split
over a ``"members"`` mesh as ``jaxmlp sweep --devices N`` splits them) timed on 1, 2, 4, ... of this
process's devices, stamped with the machine, the versions and the date::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m jaxmlp.bench.scaling --markdown docs/results/scaling.md

On a CPU the forced host devices share the machine's cores, so what the page measures there is how the
one program spreads over them; on GPUs each count is that many real devices.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import numpy as np

from .. import runs
from .jax_rows import time_sharded_sweep
from .machine import machine_info
from .timing import mlp_flops_per_example


def run_scaling(images: np.ndarray, labels: np.ndarray, *, device_counts: Sequence[int] = (1, 2, 4),
                hidden=(128, 64), batch_size: int = 32, sweep_size: int = 16, repeats: int = 2,
                data_note: str = "") -> dict:
    """The sharded lr sweep on each of ``device_counts`` devices; returns the report dict.

    Args:
        images: (N, D) uint8 training images.
        labels: (N,) int labels.
        device_counts: the mesh sizes to time, each at most ``jax.local_device_count()``.
        hidden: the MLP's hidden sizes.
        batch_size: examples per step.
        sweep_size: K, the models of the sweep (learning rates from 1e-3 to 0.5).
        repeats: timed epochs per count, the best kept (after one untimed epoch).
        data_note: where the data came from, copied into the report.

    Returns:
        ``{"machine", "data", "train_examples", "layer_sizes", "models", "batch_size", "rows"}``, a row per
        count: ``devices``, ``seconds_per_epoch`` (all models), ``seconds_per_model_epoch``,
        ``speedup`` (over the first count's), ``bytes_per_device`` (None where the backend does not
        say) and ``compile_seconds``.
    """
    too_many = [n for n in device_counts if n > jax.local_device_count()]
    if too_many:
        raise ValueError(f"run_scaling: device_counts={list(device_counts)}: only {jax.local_device_count()} "
                         f"device(s) here (on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count="
                         f"{max(device_counts)} before starting)")
    sizes = [int(images.shape[1]), *[int(h) for h in hidden], max(int(labels.max()) + 1, 10)]
    x, y = runs.prepare(images, np.float32), jax.numpy.asarray(np.asarray(labels, np.int32))
    lrs = np.geomspace(1e-3, 0.5, sweep_size) if sweep_size > 1 else np.array([0.1])
    rows: list[dict] = []
    for n in device_counts:
        seconds, compile_s, _, per_device = time_sharded_sweep(x, y, sizes, batch_size, lrs, n, repeats)
        rows.append({"devices": n, "seconds_per_epoch": seconds, "seconds_per_model_epoch": seconds / sweep_size,
                     "bytes_per_device": per_device, "compile_seconds": compile_s})
    for row in rows:
        row["speedup"] = float(rows[0]["seconds_per_epoch"]) / float(row["seconds_per_epoch"])
    return {"machine": machine_info(), "data": data_note, "train_examples": int(len(labels)), "layer_sizes": sizes,
            "flops_per_model_epoch": mlp_flops_per_example(sizes) * len(labels), "models": sweep_size,
            "batch_size": batch_size, "repeats": repeats, "rows": rows}


def format_scaling_markdown(report: dict, date: str | None = None) -> str:
    """``run_scaling``'s report as a Markdown fragment: the machine, software and date it ran on, then a
    row per device count. No paths: where the data was read from is left out.

    Args:
        report: ``run_scaling``'s report.
        date: the date to stamp (default: today, UTC, as YYYY-MM-DD).

    Returns:
        The fragment's text.
    """
    import datetime

    m = report["machine"]
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    data = report["data"].split(" from ")[0].split(" (")[0]
    forced = m["backend"] == "cpu" and m["device_count"] > 1
    devices = f"{m['backend']}, {m['device_count']} device(s)" + (" (forced host devices sharing the cores)"
                                                                  if forced else "")
    lines = ["<!-- Written by `python -m jaxmlp.bench.scaling --markdown FILE`; run it again rather than edit "
             "this. -->", "",
             "| | |", "| --- | --- |",
             f"| date | {date} |", f"| CPU | {m['cpu']}, {m['cores']} cores |",
             f"| JAX backend | {devices} |",
             f"| load average | {m.get('load_average') or 'unknown'} at the end (1 minute; above {m['cores']}, "
             f"other work shared the CPU) |",
             f"| software | Python {m['python']}, jax {m['jax']}, jaxlib {m.get('jaxlib', '?')}, numpy {m['numpy']}, "
             f"{m['system']} |",
             f"| data | {data}, {report['train_examples']:,} training examples |",
             f"| sweep | {report['models']} models {'-'.join(map(str, report['layer_sizes']))}, SGD, batch "
             f"{report['batch_size']}, one seed; {report['flops_per_model_epoch'] / 1e9:.1f} GFLOP of matmuls a "
             f"model-epoch |",
             f"| timing | best of {report['repeats']} epochs after a warm-up one; compile time separate |", "",
             "| devices | s/epoch, all models | s per model-epoch | speed-up | memory a device | compile s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        memory = "-" if r["bytes_per_device"] is None else f"{r['bytes_per_device'] / 2**20:,.0f} MiB"
        lines.append(f"| {r['devices']} | {r['seconds_per_epoch']:.2f} | {r['seconds_per_model_epoch']:.3f} | "
                     f"{r['speedup']:.2f}x | {memory} | {r['compile_seconds']:.2f} |")
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxmlp.bench.scaling``: time the sharded sweep, print the table, optionally write it.
    ``argv``: the flags (default: the process's)."""
    from ..fileio import atomic_write
    from .suite import load_bench_data

    p = argparse.ArgumentParser(prog="python -m jaxmlp.bench.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], metavar="N", help="device counts (1 2 4)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="MNIST's folder (default: as jaxmlp bench)")
    p.add_argument("--synthetic", action="store_true", help="random data of MNIST's shape")
    p.add_argument("--train-size", type=int, default=None, metavar="N", help="training examples (default: all)")
    p.add_argument("--sweep-size", type=int, default=16, metavar="K", help="models in the sweep (default: 16)")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per count, best kept (default: 2)")
    p.add_argument("--markdown", metavar="FILE", default=None, help="also write the table as Markdown")
    args = p.parse_args(argv)
    images, labels, note = load_bench_data(args.data_dir, "mnist", args.synthetic, args.train_size)
    try:
        report = run_scaling(images, labels, device_counts=args.devices, sweep_size=args.sweep_size,
                             repeats=args.repeats, data_note=note)
    except ValueError as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 1
    text = format_scaling_markdown(report)
    print(text)
    if args.markdown:
        def write(f) -> None:
            f.write(text.encode("utf-8"))

        atomic_write(args.markdown, write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
