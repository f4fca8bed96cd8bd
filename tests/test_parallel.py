"""Data parallelism: a mesh over 4 host CPU devices trains the same model as one device.

XLA_FLAGS must be set before jax initialises, so the multi-device checks run in a subprocess started
with ``--xla_force_host_platform_device_count=4``; it prints one JSON line that the test inspects.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from jaxmlp import cli, parallel, train

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jaxmlp import cli, parallel, train
    from jaxmlp.data import Dataset, write_idx

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    y = (x[:, 10:18, 10:18].mean(axis=(1, 2)) // 26).clip(0, 9).astype(np.uint8)
    data = Dataset(x[:240], y[:240], x[240:], y[240:])   # 240 = 7 batches of 32 + a short one of 16
    config = train.TrainConfig(hidden=(16,), epochs=2, batch_size=32, lr=0.3, dtype="float64", seed=3)
    out = {"device_count": jax.device_count()}
    runs = {n: train.fit(config, data, mesh=None if n == 1 else parallel.make_mesh(n)) for n in (1, 4)}
    leaves = {n: [np.asarray(l) for l in jax.tree_util.tree_leaves(r.params)] for n, r in runs.items()}
    out["losses"] = {n: [h["loss"] for h in r.history] for n, r in runs.items()}
    out["test_accuracy"] = {n: r.test_accuracy for n, r in runs.items()}
    out["max_param_diff"] = {4: max(float(np.abs(a - b).max()) for a, b in zip(leaves[1], leaves[4]))}
    out["param_sharding"] = list(runs[4].params[0]["W"].sharding.spec)
    out["param_devices"] = len(runs[4].params[0]["W"].sharding.device_set)

    # The compiled epoch really splits the batch: 32 rows / 4 devices = 8 per device, and XLA
    # all-reduces the gradients.
    mesh = parallel.make_mesh(4)
    spec = train.spec_for(config, 240)
    params = train.init_model(config, jax.random.PRNGKey(0), 784, 10)
    hp = train.hparams_dict(np.float64, lr=0.3)
    opt_state = train.make_optimizer(spec, hp).init(params)
    xs = train.prepare(data.x_train, np.float64)
    ys = jax.numpy.asarray(data.y_train, jax.numpy.int32)
    dspec, args = parallel.distribute(mesh, spec, (params, opt_state, jax.random.PRNGKey(1), xs, ys, hp))
    hlo = train.run_epoch.lower(*args, spec=dspec).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    out["per_device_rows"] = "f64[8,784]" in hlo

    folder = sys.argv[1]
    for name, arr in (("train-images-idx3-ubyte", data.x_train), ("train-labels-idx1-ubyte", data.y_train),
                      ("t10k-images-idx3-ubyte", data.x_test), ("t10k-labels-idx1-ubyte", data.y_test)):
        write_idx(f"{folder}/{name}", arr)
    out["cli_rc"] = cli.main(["train", "--data-dir", folder, "--devices", "4", "--hidden", "16", "--epochs", "2",
                              "--batch-size", "32", "--lr", "0.3", "--seed", "3", "--dtype", "float64", "--quiet",
                              "--metrics-out", f"{folder}/m.json"])
    out["cli_bad_batch_rc"] = cli.main(["train", "--data-dir", folder, "--devices", "4", "--batch-size", "30",
                                        "--epochs", "1", "--quiet"])
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist4")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), folder, proc.stderr


def test_multi_device_matches_single_device(four_devices):
    """4 devices, same global batch and shuffle: the same losses, params and test accuracy as one
    device. float64; only the order of the gradient sums differs (per-device partial sums then an
    all-reduce), worth ~1e-16 relative per step, so 1e-12 catches any real difference."""
    out, _, _ = four_devices
    assert out["device_count"] == 4
    for n in ("4",):
        for a, b in zip(out["losses"]["1"], out["losses"][n]):
            assert a == pytest.approx(b, rel=1e-12)
        assert out["test_accuracy"][n] == out["test_accuracy"]["1"]
        assert out["max_param_diff"][n] < 1e-12
    assert out["losses"]["1"][1] < out["losses"]["1"][0]  # it trained


def test_params_are_replicated_and_the_batch_is_split(four_devices):
    """Params end up replicated on all 4 devices; the compiled epoch works on 8-row shards of the
    32-row batch and all-reduces the gradients."""
    out, _, _ = four_devices
    assert out["param_sharding"] == [] and out["param_devices"] == 4
    assert out["all_reduce"] and out["per_device_rows"]


def test_cli_devices_flag_records_device_count(four_devices):
    """`jaxmlp train --devices 4` succeeds and its metrics JSON records 4 devices and the same
    accuracy as the library run; a batch size not divisible by the devices is a one-line error."""
    out, folder, stderr = four_devices
    assert out["cli_rc"] == 0
    metrics = json.loads((folder / "m.json").read_text())
    assert metrics["devices"] == 4
    assert metrics["test_accuracy"] == out["test_accuracy"]["4"]
    assert out["cli_bad_batch_rc"] == 1
    assert "--batch-size 30 must be a multiple of --devices 4" in stderr


def test_make_mesh_validates_device_count():
    """Asking for more devices than exist is a ValueError naming --devices; one device always works."""
    assert parallel.make_mesh(1).devices.size == 1
    with pytest.raises(ValueError, match="--devices"):
        parallel.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="--devices"):
        parallel.make_mesh(0)


def test_data_parallel_spec_sets_the_batch_sharding():
    """The spec gains a batch sharding over the mesh's data axis and stays hashable (a jit static)."""
    mesh = parallel.make_mesh(1)
    spec = parallel.data_parallel_spec(train.TrainSpec(batch_size=32), mesh)
    assert spec.batch_sharding == parallel.batch_sharding(mesh)
    assert hash(spec) == hash(parallel.data_parallel_spec(train.TrainSpec(batch_size=32), mesh))
    assert parallel.device_count(None) == 1 and parallel.device_count(mesh) == 1


def test_cli_too_many_devices_is_one_line_error(capsys):
    """--devices beyond what exists fails before any data is read, with one line on stderr."""
    rc = cli.main(["train", "--devices", str(jax.device_count() + 7), "--data-dir", "/nonexistent"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices" in err[0]
