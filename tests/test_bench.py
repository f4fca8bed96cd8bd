"""The benchmark: its FLOP count, its NumPy baseline being the notebook's algorithm, the --json
report's fields on a tiny synthetic setting, and the engine's programs never recompiling."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import reset_peak_rss

from jaxmlp import bench, cli, engine, members, steps


def test_flop_count_of_the_notebook_mlp():
    """784-128-64-10: forward 2*109184, weight grads 2*109184, activation grads 2*(8192 + 640) (none
    for the input) = 454,400 FLOPs per example, 27.26 GFLOP per 60,000-example epoch."""
    assert bench.mlp_flops_per_example([784, 128, 64, 10]) == 454_400
    assert bench.mlp_flops_per_example([784, 128, 64, 10]) * 60_000 == pytest.approx(27.26e9, rel=1e-3)
    assert bench.mlp_flops_per_example([5, 3]) == 2 * 15 + 2 * 15  # one layer: no activation gradients


def test_numpy_step_is_the_jitted_sgd_step(x64):
    """The bench's NumPy baseline does the same update as steps.sgd_step (float64 both, so the only
    difference is summation order: agreement to 1e-12 relative)."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 20))
    y = rng.integers(0, 4, 16)
    np_params = bench.numpy_params([20, 8, 4], seed=1)
    jax_params = [{"W": jnp.asarray(p["W"]), "b": jnp.asarray(p["b"][0])} for p in np_params]
    loss = bench.numpy_step(np_params, x, np.eye(4)[y], 0.5)
    new_params, jax_loss = steps.sgd_step(jax_params, jnp.asarray(x), jnp.asarray(y), 0.5)
    for p, q in zip(np_params, new_params):
        np.testing.assert_allclose(p["W"], q["W"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(p["b"][0], q["b"], rtol=1e-12, atol=1e-15)
    assert loss == pytest.approx(float(jax_loss), abs=1e-7)  # the notebook's +1e-8 inside the log


def test_wide_first_layer_sweep_is_the_groups_arithmetic(x64):
    """The bench's wide-layout prototype trains what an lr sweep's vmapped group trains: three SGD
    steps on the shared minibatches give the same params (float64; only summation order differs,
    so 1e-12 relative) and the same per-member losses."""

    n, b, lrs = 70, 16, [0.5, 0.1, 0.02]
    config, spec, _, _ = bench.jax_rows._setup([12, 6, 5, 3], b, n, lrs[0])
    configs = [dataclasses.replace(config, lr=lr) for lr in lrs]
    x = jax.random.uniform(jax.random.PRNGKey(1), (n, 12), jnp.float64)
    y = jax.random.randint(jax.random.PRNGKey(2), (n,), 0, 3)
    state, hp = members.init_members(configs, 12, 3, spec, shared_key=True)
    order = members.group_order(state.key, state.epoch, n, True)
    group, group_losses = members.run_group_chunk(state, order, x, y, hp, jnp.int32(3), spec=spec,
                                                capacity=engine.steps_per_epoch(n, b), shared_key=True)
    wide, wide_losses = bench.wide_sweep_steps(bench.wide_params(state.params), jnp.asarray(lrs), x, y,
                                               order[:3 * b], batch_size=b)
    for got, want in zip(jax.tree_util.tree_leaves(wide), jax.tree_util.tree_leaves(bench.wide_params(group.params))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(wide_losses, np.asarray(group_losses)[:, :3].T, rtol=1e-12)
    assert not np.allclose(group.params[0]["W"][0], state.params[0]["W"][0])  # the steps really moved


def test_engine_programs_do_not_recompile_across_epochs_chunk_sizes_or_calls():
    """The chunk program is built once for a shape: later epochs, other chunk sizes (a traced step
    count) and a second run build no XLA program (neither compiled nor loaded from the persistent
    cache); the fused epoch likewise."""
    _, spec, state, hp = bench.jax_rows._setup([12, 6, 3], 16, 70, 0.1)
    x = jax.random.uniform(jax.random.PRNGKey(1), (70, 12), jnp.float32)
    y = jax.random.randint(jax.random.PRNGKey(2), (70,), 0, 3)
    steps = engine.steps_per_epoch(70, 16)

    def run(state, sizes):
        for size in sizes:
            order = engine.epoch_order(state.key, state.epoch, 70)
            state, _ = engine.run_chunk(state, order, x, y, hp, jnp.int32(size), spec=spec, capacity=steps)
        return state

    run(state, [2])
    engine.run_fused_epoch(state, x, y, hp, spec=spec)
    with bench.CompileCounter() as built:
        end = run(state, [2, 3, 5, 1, 4])  # three epochs: 2+3, 5, 1+4
        run(state._replace(key=jax.random.PRNGKey(9)), [5, 5])
        engine.run_fused_epoch(end, x, y, hp, spec=spec)
    assert int(end.epoch) == 3 and int(end.step) == 0
    assert built.count == 0


def test_bench_json_has_every_row_and_field(capsys):
    """`jaxmlp bench --json` on a tiny synthetic set: five rows with timings, GFLOP/s against a measured
    peak, the ratios, no recompilation while timed, and a peak RSS."""
    reset_peak_rss()  # the bench's own peak, not that of the tests this worker ran before
    rss_before = bench.peak_rss_mb()  # right after the reset: this worker's current RSS
    rc = cli.main(["bench", "--synthetic", "--json", "--train-size", "512", "--hidden", "16",
                   "--numpy-steps", "4", "--loop-steps", "4", "--repeats", "1", "--sweep-size", "2",
                   "--large-batch", "128", "--peak-size", "128"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layer_sizes"] == [784, 16, 10] and report["train_examples"] == 512
    assert report["flops_per_epoch"] == bench.mlp_flops_per_example([784, 16, 10]) * 512
    assert report["data"].startswith("synthetic")
    assert report["matmul_peak_gflops"] > 0
    names = [r["name"] for r in report["rows"]]
    assert names == ["numpy notebook", "jit step, Python loop", "fused epoch (lax.scan)", "its matmuls alone",
                     "chunked engine, 4 chunks/epoch", "chunked engine, 1 chunk/epoch",
                     "jaxmlp.train, a user's loss, 1 chunk/epoch", "vmapped sweep, 2 lrs",
                     f"sharded sweep, 2 lrs, {jax.local_device_count()} device(s)", "sweep, one wide first layer",
                     "fused epoch, large batch", "the large batch's matmuls alone"]
    for row in report["rows"]:
        for field in ("seconds_per_epoch", "samples_per_second", "gflops", "fraction_of_peak"):
            assert row[field] > 0
    assert report["rows"][1]["compile_seconds"] > 0 and report["rows"][0]["compile_seconds"] is None
    assert report["rows"][7]["models"] == 2 and report["rows"][8]["models"] == 2
    assert set(report["ratios"]) == {"fused_speedup_vs_numpy", "fused_speedup_vs_jit_loop",
                                     "jit_loop_speedup_vs_numpy", "chunked_vs_fused", "one_chunk_vs_fused",
                                     "sweep_cost_per_model_vs_fused", "sweep_cost_per_model_vs_single",
                                     "large_batch_fraction_of_peak", "sweep_cost_floor_at_peak",
                                     "large_batch_matmul_share", "fused_matmul_share",
                                     "wide_sweep_cost_per_model_vs_fused", "user_loss_vs_builtin"}
    by = {r["name"]: r for r in report["rows"]}
    assert report["ratios"]["sweep_cost_floor_at_peak"] == by["fused epoch (lax.scan)"]["fraction_of_peak"]
    assert report["ratios"]["fused_speedup_vs_numpy"] == pytest.approx(
        report["rows"][0]["seconds_per_epoch"] / report["rows"][2]["seconds_per_epoch"])
    assert report["ratios"]["chunked_vs_fused"] == pytest.approx(
        by["chunked engine, 4 chunks/epoch"]["seconds_per_epoch"] / report["rows"][2]["seconds_per_epoch"])
    seconds = {name: row["seconds_per_epoch"] for name, row in by.items()}
    assert report["ratios"]["large_batch_matmul_share"] == pytest.approx(
        seconds["the large batch's matmuls alone"] / seconds["fused epoch, large batch"])
    assert report["ratios"]["user_loss_vs_builtin"] == pytest.approx(
        seconds["jaxmlp.train, a user's loss, 1 chunk/epoch"] / seconds["chunked engine, 1 chunk/epoch"])
    assert report["ratios"]["fused_matmul_share"] == pytest.approx(
        by["its matmuls alone"]["seconds_per_epoch"] / by["fused epoch (lax.scan)"]["seconds_per_epoch"])
    assert report["recompiles_while_timed"] == 0
    # The worker holds what earlier modules left (over 1.5 GB in CI), so bound what the bench added.
    assert rss_before <= report["peak_rss_mb"] < rss_before + 512
    assert report["machine"]["cores"] >= 1 and report["machine"]["backend"] == jax.default_backend()


def test_bench_text_report_and_bad_data_dir(capsys, tmp_path):
    """The text report is a table with the ratios; an explicit --data-dir without MNIST is a one-line
    error rather than a silent switch to synthetic data."""
    report = {
        "machine": {"cpu": "cpu", "cores": 2, "backend": "cpu", "device": "cpu", "jax": "0"}, "data": "synthetic",
        "train_examples": 10, "layer_sizes": [4, 2], "flops_per_epoch": 1e9, "matmul_peak_size": 8,
        "matmul_peak_gflops": 10.0, "peak_rss_mb": 100.0, "recompiles_while_timed": 0,
        "rows": [{"name": n, "batch_size": 1, "models": m, "seconds_per_model_epoch": s, "samples_per_second": 1.0,
                  "gflops": 1.0, "fraction_of_peak": 0.1, "compile_seconds": None}
                 for n, m, s in (("numpy notebook", 1, 2.0), ("fused", 1, 0.5), ("sweep", 4, 0.25))],
        "ratios": {"fused_speedup_vs_numpy": 4.0, "fused_speedup_vs_jit_loop": 2.0, "chunked_vs_fused": 1.02,
                   "one_chunk_vs_fused": 0.99, "sweep_cost_per_model_vs_fused": 0.5,
                   "sweep_cost_per_model_vs_single": 0.45, "large_batch_fraction_of_peak": 0.6,
                   "sweep_cost_floor_at_peak": 0.25, "large_batch_matmul_share": 0.7,
                   "fused_matmul_share": 0.8, "wide_sweep_cost_per_model_vs_fused": 1.7,
                   "user_loss_vs_builtin": 1.03},
    }
    text = bench.format_report(report)
    assert "4.0x" in text and "8.0x" in text and "60% of the matmul peak" in text and "floor here: 0.25x" in text
    assert "its matmuls alone take 80% of its time" in text and "prototype): 1.70x" in text
    assert "1.030x the built-in step's epoch" in text
    assert "1.020x the fused epoch" in text and "0.45x a single run" in text and "70% of its time" in text
    assert "machine: cpu, 2 cores" in text
    assert cli.main(["bench", "--data-dir", str(tmp_path)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
