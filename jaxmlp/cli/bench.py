"""``jaxmlp bench``: the speed of every way to train, side by side in one process."""
from __future__ import annotations

import json

from jaxmlp.config import hidden_sizes, positive_float, positive_int

from .common import (
    UsageError,
    add_data_flags,
    add_metrics_flag,
    check_outputs,
    hidden_token,
    say,
    subcommand,
    write_metrics,
)


def add(sub) -> None:
    p = subcommand(sub, "bench", run, "time numpy, a jitted-step loop, fused epochs, chunks, a sweep, a large batch")
    add_data_flags(p)
    p.add_argument("--synthetic", action="store_true",
                   help="random data of MNIST's shape (default: real MNIST when found, else synthetic)")
    p.add_argument("--train-size", type=positive_int, default=None, metavar="N",
                   help="training examples per epoch (default: all 60000)")
    p.add_argument("--hidden", type=hidden_token, nargs="+", default=["128", "64"], metavar="N",
                   help="hidden layer sizes (default: 128 64)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default: 32)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default: 0.1)")
    p.add_argument("--large-batch", type=positive_int, default=512, help="the large-batch row's size (default: 512)")
    p.add_argument("--sweep-size", type=positive_int, default=16, help="learning rates in the sweep row (default: 16)")
    p.add_argument("--numpy-steps", type=positive_int, default=600, help="minibatches timed for numpy (default: 600)")
    p.add_argument("--loop-steps", type=positive_int, default=600,
                   help="minibatches timed for the jitted-step loop (default: 600)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed repeats, best kept; the sweep row does half as many (default: 5)")
    p.add_argument("--peak-size", type=positive_int, default=2048,
                   help="side of the square matmul that measures the peak (default: 2048)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_metrics_flag(p, "the JSON report")
    p.add_argument("--out", metavar="FILE", default=None, help="the same as --metrics-out (give one of them)")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="also write the report as a Markdown table stamped with the date, the CPU model and core "
                        "count, the GPU and the jax, jaxlib and numpy versions (docs/results/bench.md is one)")


def run(args) -> int:
    """Run, in one process and on the same data, the notebook's NumPy algorithm, a Python loop over the jitted step,
    the fused lax.scan epoch, the chunked engine that `train` uses, a vmapped learning-rate sweep and a large-
    batch run; print seconds per epoch, samples/s, GFLOP/s against a measured matmul peak, the ratios and the
    machine. Steady state: compile time is excluded (and reported).
    """
    from jaxmlp.bench import format_markdown, format_report, load_bench_data, run_bench
    from jaxmlp.fileio import atomic_write, check_writable
    from jaxmlp.parallel import is_primary

    if args.out and args.metrics_out:
        raise UsageError("--out is another name for --metrics-out; give one of them")
    args.metrics_out = args.metrics_out or args.out
    check_outputs(args)
    if args.markdown:
        check_writable(args.markdown, "--markdown")
    images, labels, note = load_bench_data(args.data_dir, args.dataset, args.synthetic, args.train_size)
    for flag, size in (("--batch-size", args.batch_size), ("--large-batch", args.large_batch)):
        if size > len(labels):  # a row times steps of full batches
            raise UsageError(f"{flag} {size} is more than the {len(labels)} training examples the bench times "
                             f"(--train-size)")
    if not args.json:
        say(f"bench: {note}; timing the rows...")

    def on_row(row):
        if not args.json:
            say(f"  {row['name']}: {row['seconds_per_model_epoch']:.3f} s per model-epoch")

    report = run_bench(images, labels, hidden=hidden_sizes(args.hidden), batch_size=args.batch_size, lr=args.lr,
                       large_batch=args.large_batch, sweep_size=args.sweep_size, numpy_steps=args.numpy_steps,
                       loop_steps=args.loop_steps, repeats=args.repeats, peak_size=args.peak_size,
                       data_note=note, on_row=on_row)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    write_metrics(args.metrics_out, report)
    if args.markdown and is_primary():
        text = format_markdown(report).encode("utf-8")

        def write(f) -> None:
            f.write(text)

        atomic_write(args.markdown, write)
    return 0
