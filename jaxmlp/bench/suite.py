"""The whole benchmark: its data, every row in order on the same data, and the report dict."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import runs
from .jax_rows import (
    time_chunked,
    time_fused,
    time_jit_loop,
    time_matmuls,
    time_sharded_sweep,
    time_sweep,
    time_user_loss,
    time_wide_sweep,
)
from .machine import machine_info, peak_rss_mb
from .numpy_rows import time_numpy
from .timing import matmul_peak, mlp_flops_per_example


def load_bench_data(data_dir=None, dataset: str = "mnist", synthetic: bool = False,
                    train_size: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 images (N, 784) and int labels (N,) for the bench, and a note saying where they came from.

    Real ``dataset`` from ``data_dir`` / $JAXMLP_DATA_DIR / the cache when found there (never
    downloaded); otherwise, or with ``synthetic``, random pixels and labels of MNIST's shape drawn with
    ``seed`` (timing does not depend on the values). ``train_size``: keep the first that many examples."""
    from ..data import DataError, load_dataset, resolve_data_dir

    note = None
    if not synthetic:
        folder = resolve_data_dir(data_dir, dataset)
        try:
            ds = load_dataset(folder)
            images, labels = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train.astype(np.int32)
            note = f"{dataset} from {folder}"
        except DataError as err:
            if data_dir is not None:
                raise
            note = f"synthetic ({dataset} not found: {str(err).splitlines()[0]})"
    if note is None or note.startswith("synthetic"):
        n = train_size or 60000
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int32)
        note = note or "synthetic (random pixels of MNIST's shape, by request)"
    if train_size is not None:
        if train_size > len(images):
            raise ValueError(f"load_bench_data: train_size={train_size} exceeds the {len(images)} training examples")
        images, labels = images[:train_size], labels[:train_size]
    return images, labels, note


SMALL_DOTS, LARGE_DOTS = "its matmuls alone", "the large batch's matmuls alone"
WIDE_SWEEP = "sweep, one wide first layer"
USER_LOSS = "jaxmlp.train, a user's loss, 1 chunk/epoch"


def _row(name: str, batch_size: int, seconds: float, samples: int, flops: float, peak: float,
         compile_s: float | None, models: int, note: str) -> dict:
    """One row of the report: ``samples`` examples and ``flops`` matmul FLOPs done in ``seconds``."""
    return {"name": name, "batch_size": batch_size, "models": models, "seconds_per_epoch": seconds,
            "seconds_per_model_epoch": seconds / models, "samples_per_second": samples / seconds,
            "gflops": flops / seconds / 1e9, "fraction_of_peak": flops / seconds / 1e9 / peak,
            "compile_seconds": compile_s, "note": note}


def _ratios(by: dict, sweep_size: int) -> dict:
    """The report's ratios from its rows (by name)."""
    seconds = {name: row["seconds_per_epoch"] for name, row in by.items()}
    np_s, loop_s = seconds["numpy notebook"], seconds["jit step, Python loop"]
    fused_s, big_s = seconds["fused epoch (lax.scan)"], seconds["fused epoch, large batch"]
    chunk_s, whole_s = seconds["chunked engine, 4 chunks/epoch"], seconds["chunked engine, 1 chunk/epoch"]
    sweep_s = seconds[f"vmapped sweep, {sweep_size} lrs"]
    return {
        "fused_speedup_vs_numpy": np_s / fused_s,
        "fused_speedup_vs_jit_loop": loop_s / fused_s,
        "jit_loop_speedup_vs_numpy": np_s / loop_s,
        # The engine against the pre-chunk fused epoch (seconds over seconds; 1.05 = 5% slower).
        "chunked_vs_fused": chunk_s / fused_s,
        "one_chunk_vs_fused": whole_s / fused_s,
        # A user's loss through jaxmlp.train against the built-in step on the same engine (1.0 = same cost).
        "user_loss_vs_builtin": seconds[USER_LOSS] / whole_s,
        "sweep_cost_per_model_vs_fused": (sweep_s / sweep_size) / fused_s,
        "sweep_cost_per_model_vs_single": (sweep_s / sweep_size) / whole_s,
        # The wide-first-layer prototype (shared batch, plain SGD) against the fused single run.
        "wide_sweep_cost_per_model_vs_fused": (seconds[WIDE_SWEEP] / sweep_size) / fused_s,
        # A sweep cannot beat the matmul peak, so its per-model cost is at least the single run's
        # fraction of peak: the floor of the ratios above on this machine.
        "sweep_cost_floor_at_peak": by["fused epoch (lax.scan)"]["fraction_of_peak"],
        # How much of the single run its matmuls alone take (one bare scan of the same products): near
        # 1, the epoch is bound by its 32-row products and a sweep can gain only by running members
        # concurrently (chains over cores) or by products of other shapes that run nearer the peak.
        "fused_matmul_share": seconds[SMALL_DOTS] / fused_s,
        "large_batch_fraction_of_peak": by["fused epoch, large batch"]["fraction_of_peak"],
        # How much of the large-batch epoch its matmuls account for (the rest: elementwise work,
        # gathers, the update, the loop).
        "large_batch_matmul_share": seconds[LARGE_DOTS] / big_s,
    }


def _device_rows(add: Callable, x: jax.Array, y: jax.Array, sizes: list, *, batch_size: int, lr: float,
                 large_batch: int, sweep_size: int, repeats: int) -> int:
    """``add`` the rows that train on the device-resident x (N, D), y (N,); returns the number of
    recompilations seen while timing them."""
    fused_s, fused_c, r2 = time_fused(x, y, sizes, batch_size, lr, repeats)
    add("fused epoch (lax.scan)", batch_size, fused_s, fused_c, note="engine.fused_epoch")
    small_dots_s, small_dots_c, r8 = time_matmuls(x, sizes, batch_size, repeats)
    add(SMALL_DOTS, batch_size, small_dots_s, small_dots_c, note="forward + backward dots of the fused epoch")
    chunk_s, chunk_c, r3 = time_chunked(x, y, sizes, batch_size, lr, 4, repeats)
    add("chunked engine, 4 chunks/epoch", batch_size, chunk_s, chunk_c, note="engine.chunk, as fit runs it")
    whole_s, _, r4 = time_chunked(x, y, sizes, batch_size, lr, 1, repeats)
    add("chunked engine, 1 chunk/epoch", batch_size, whole_s, 0.0, note="the same program")
    user_s, user_c, r10 = time_user_loss(x, y, sizes, batch_size, lr, repeats)
    add(USER_LOSS, batch_size, user_s, user_c, note="jaxmlp.train's step from a user's loss_fn and optim.sgd")
    lrs = np.geomspace(1e-3, 0.5, sweep_size) if sweep_size > 1 else np.array([lr])
    sweep_s, sweep_c, r5 = time_sweep(x, y, sizes, batch_size, lrs, max(2, repeats // 2))  # K epochs a repeat
    add(f"vmapped sweep, {sweep_size} lrs", batch_size, sweep_s, sweep_c, models=sweep_size,
        note="vmap of engine.chunk, one chunk/epoch")
    devices = jax.local_device_count()
    shard_s, shard_c, r11, per_device = time_sharded_sweep(x, y, sizes, batch_size, lrs, devices,
                                                           max(2, repeats // 2))
    memory = "" if per_device is None else f"; {per_device / 2**20:.0f} MiB a device"
    add(f"sharded sweep, {sweep_size} lrs, {devices} device(s)", batch_size, shard_s, shard_c, models=sweep_size,
        note=f"the vmapped sweep's members split over a 'members' mesh (jaxmlp sweep --devices){memory}")
    wide_s, wide_c, r9 = time_wide_sweep(x, y, sizes, batch_size, lrs, max(2, repeats // 2))
    add(WIDE_SWEEP, batch_size, wide_s, wide_c, models=sweep_size,
        note="prototype, not the engine: plain SGD, shared minibatch, the first layers as one wide product")
    big_s, big_c, r6 = time_fused(x, y, sizes, large_batch, lr, repeats)
    add("fused epoch, large batch", large_batch, big_s, big_c)
    dots_s, dots_c, r7 = time_matmuls(x, sizes, large_batch, repeats)
    add(LARGE_DOTS, large_batch, dots_s, dots_c, note="forward + backward dots of the large-batch epoch")
    return r2 + r3 + r4 + r5 + r6 + r7 + r8 + r9 + r10 + r11


def run_bench(images: np.ndarray, labels: np.ndarray, *, hidden=(128, 64), batch_size: int = 32,
              lr: float = 0.1, large_batch: int = 512, sweep_size: int = 16, numpy_steps: int = 600,
              loop_steps: int = 600, repeats: int = 5, peak_size: int = 2048, data_note: str = "",
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Run every row on (images uint8 (N, D), labels (N,)) and return the report dict (see ``--json``).

    Args:
        images: (N, D) uint8 training images.
        labels: (N,) int labels.
        hidden: the MLP's hidden sizes.
        batch_size: the small batch of most rows.
        lr: learning rate of every row.
        large_batch: the batch of the large-batch rows.
        sweep_size: models in the sweep rows.
        numpy_steps: steps the NumPy row times.
        loop_steps: steps the Python-loop row times.
        repeats: timings per row, the best kept.
        peak_size: the side of the matmul that measures the peak.
        data_note: where the data came from, copied into the report.
        on_row: called with each row as it is measured.
    """
    n, d = images.shape
    num_classes = max(int(labels.max()) + 1, 10)
    sizes = [d, *[int(h) for h in hidden], num_classes]
    flops_epoch = mlp_flops_per_example(sizes) * n
    peak_before = matmul_peak(peak_size)
    rows: list[dict] = []

    def add(name, bs, seconds, compile_s=None, models=1, note=""):
        rows.append(_row(name, bs, seconds, n * models, flops_epoch * models, peak_before, compile_s, models, note))
        if on_row is not None:
            on_row(rows[-1])

    np_s = time_numpy(images, labels, sizes, batch_size, lr, numpy_steps, repeats)
    add("numpy notebook", batch_size, np_s, note=f"float64 weights; {min(numpy_steps, n // batch_size)} steps timed")
    loop_s, loop_c, r1 = time_jit_loop(images, labels, sizes, batch_size, lr, loop_steps, repeats)
    add("jit step, Python loop", batch_size, loop_s, loop_c, note=f"{min(loop_steps, n // batch_size)} steps timed")
    x = runs.prepare(images, jnp.float32)  # resident on the device, as fit() has it
    recompiles = r1 + _device_rows(add, x, jnp.asarray(labels, jnp.int32), sizes, batch_size=batch_size, lr=lr,
                                   large_batch=large_batch, sweep_size=sweep_size, repeats=repeats)
    # Measured before and after the rows, the higher kept: a busy moment must not lower the bar.
    peak = max(peak_before, matmul_peak(peak_size))
    for row in rows:
        row["fraction_of_peak"] = row["gflops"] / peak
    return _report(rows, sizes, n, lr, peak, peak_size, repeats, sweep_size, recompiles, data_note)


def _report(rows: list[dict], sizes: list, n: int, lr: float, peak: float, peak_size: int, repeats: int,
            sweep_size: int, recompiles: int, data_note: str) -> dict:
    """The report dict of ``run_bench`` around its measured rows (the machine stamped now)."""
    flops = mlp_flops_per_example(sizes)
    return {
        "machine": machine_info(),
        "data": data_note,
        "train_examples": n,
        "layer_sizes": sizes,
        "lr": lr,
        "flops_per_example": flops,
        "flops_per_epoch": flops * n,
        "flops_formula": "N * (2S + 2S + 2(S - d0*d1)), S = sum of d_{l-1}*d_l (forward, weight grads, "
                         "activation grads)",
        "matmul_peak_gflops": peak,
        "matmul_peak_size": peak_size,
        "timing": f"best of {repeats} after a warm-up (step loops: best of 10 chunks per pass); compile time separate",
        "rows": rows,
        "ratios": _ratios({r["name"]: r for r in rows}, sweep_size),
        "recompiles_while_timed": int(recompiles),
        "persistent_compile_cache": getattr(jax.config, "jax_compilation_cache_dir", None) or None,
        "peak_rss_mb": peak_rss_mb(),
    }
