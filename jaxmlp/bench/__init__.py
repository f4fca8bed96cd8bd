"""``jaxmlp bench``: the ways of training the notebook's MLP, timed side by side in one process.

Rows, all on the same data: the notebook's NumPy algorithm (float64 weights, float32 inputs, its
forward / backward / update functions); the notebook's loop calling the jitted ``teaching.sgd_step`` on
host minibatches instead; the pre-chunk fused epoch (``engine.fused_epoch``: one ``lax.scan``
program per epoch) and its matmuls alone (how much of the epoch its 32-row products are); the
engine ``runs.fit`` runs (``engine.chunk``, in 4 chunks an epoch and in one) beside it; a vmapped
learning-rate sweep (``members.run_group_chunk``: the same chunk under ``vmap``), the same sweep with
its members split over this process's devices (a ``"members"`` mesh, ``jaxmlp sweep --devices``;
``scaling`` times it at several device counts) and a prototype of the same sweep with the members'
first layers as one wide product on the shared minibatch (``wide_sweep_steps``: plain SGD only,
not the engine; measured so that a machine shows whether that layout would pay off there); a
large-batch fused run and that run's matmuls alone, so the
distance between an epoch and its dots shows. Every timing is steady state: programs are compiled
(and the compile time reported) and run once before the clock starts; the best of the repeats is
kept, as ``timeit`` does, because on a shared machine noise only ever adds time. The report names
the machine (CPU model, cores, device).

Work per epoch is counted in matmul FLOPs, for layer sizes d_0..d_L and N examples::

    FLOPs = N * (2 * S  +  2 * S  +  2 * (S - d_0 * d_1)),   S = sum_l d_{l-1} * d_l
              forward   weight grads   activation grads (none for the input layer)

i.e. 454,400 per example and 27.3 GFLOP per MNIST epoch for 784-128-64-10 (elementwise work ignored).
Achieved GFLOP/s are set against a matmul peak measured in the same process (a jitted float32
square matmul).

One concern a module: ``machine`` (where the numbers come from: CPU, cores, device, versions, peak
memory), ``timing`` (the harness: best-of timers, the compile counter, the FLOP count and the matmul
peak), ``numpy_rows`` (the notebook's algorithm in NumPy), ``jax_rows`` (the rows that run JAX),
``suite`` (the data, every row in order, the report dict) and ``report`` (the report as text and as
Markdown). Every public name is importable from ``jaxmlp.bench``.
"""
from . import jax_rows, machine, numpy_rows, report, suite, timing
from .jax_rows import (
    time_chunked,
    time_fused,
    time_jit_loop,
    time_matmuls,
    time_sharded_sweep,
    time_sweep,
    time_user_loss,
    time_wide_sweep,
    wide_params,
    wide_sweep_steps,
)
from .machine import machine_info, peak_rss_mb
from .numpy_rows import numpy_params, numpy_step, time_numpy
from .report import TABLE_HEADER, format_markdown, format_report
from .suite import LARGE_DOTS, SMALL_DOTS, USER_LOSS, WIDE_SWEEP, load_bench_data, run_bench
from .timing import PROGRAM_BUILD_EVENTS, CompileCounter, matmul_peak, mlp_flops_per_example

__all__ = [
    "CompileCounter", "LARGE_DOTS", "PROGRAM_BUILD_EVENTS", "SMALL_DOTS", "TABLE_HEADER", "USER_LOSS", "WIDE_SWEEP",
    "format_markdown", "format_report", "jax_rows", "load_bench_data", "machine", "machine_info", "matmul_peak",
    "mlp_flops_per_example", "numpy_params", "numpy_rows", "numpy_step", "peak_rss_mb", "report", "run_bench",
    "suite", "time_chunked", "time_fused", "time_jit_loop", "time_matmuls", "time_numpy", "time_sharded_sweep",
    "time_sweep", "time_user_loss", "time_wide_sweep", "timing", "wide_params", "wide_sweep_steps",
]
