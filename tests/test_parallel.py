"""Data parallelism: a mesh over 4 host CPU devices trains the same model as one device, and two
processes on JAX's distributed runtime train the same model as one process with two devices.

XLA_FLAGS must be set before jax initialises, so the multi-device checks run in a subprocess started
with ``--xla_force_host_platform_device_count=4``; it prints one JSON line that the test inspects.
The multi-process checks start ``tests/_mp_worker.py`` twice on 127.0.0.1 (one CPU device each, gloo
collectives), then once with two forced host devices, each under a timeout, and compare what they wrote.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _processes import free_port, run_together, worker_env

from jaxmlp import cli, parallel, runs

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)  # this child process computes in float64 throughout
    from jaxmlp import cli, engine, parallel, runs
    from jaxmlp.config import TrainConfig, hparams
    from jaxmlp.data import Dataset, write_idx

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    y = (x[:, 10:18, 10:18].mean(axis=(1, 2)) // 26).clip(0, 9).astype(np.uint8)
    data = Dataset(x[:240], y[:240], x[240:], y[240:])   # 240 = 7 batches of 32 + a short one of 16
    config = TrainConfig(hidden=(16,), epochs=2, batch_size=32, lr=0.3, dtype="float64", seed=3)
    out = {"device_count": jax.device_count()}
    fits = {n: runs.fit(config, data, mesh=None if n == 1 else parallel.make_mesh(n)) for n in (1, 4)}
    leaves = {n: [np.asarray(l) for l in jax.tree_util.tree_leaves(r.params)] for n, r in fits.items()}
    out["losses"] = {n: [h["loss"] for h in r.history] for n, r in fits.items()}
    out["test_accuracy"] = {n: r.test_accuracy for n, r in fits.items()}
    out["max_param_diff"] = {4: max(float(np.abs(a - b).max()) for a, b in zip(leaves[1], leaves[4]))}
    out["param_sharding"] = list(fits[4].params[0]["W"].sharding.spec)
    out["param_devices"] = len(fits[4].params[0]["W"].sharding.device_set)

    # The compiled chunk really splits the batch: 32 rows / 4 devices = 8 per device, and XLA
    # all-reduces the gradients.
    mesh = parallel.make_mesh(4)
    spec = runs.spec_for(config, 240)
    params = runs.init_model(config, jax.random.PRNGKey(0), 784, 10)
    hp = parallel.replicate(hparams(config, np.float64), mesh)
    state = engine.init_state(params, runs.make_optimizer(spec, hp), jax.random.PRNGKey(1))
    xs = runs.prepare(data.x_train, np.float64)
    ys = jax.numpy.asarray(data.y_train, jax.numpy.int32)
    dspec, (state, xs, ys) = parallel.distribute(mesh, spec, (state, xs, ys))
    order = parallel.replicate(jax.numpy.arange(240, dtype=jax.numpy.int32), mesh)
    hlo = engine.run_chunk.lower(state, order, xs, ys, hp, jax.numpy.int32(8), spec=dspec,
                                capacity=8).compile().as_text()
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
                          cwd=REPO, timeout=300, check=False)
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
    """Asking for more devices than exist is a ValueError naming num_devices; one device always works."""
    assert parallel.make_mesh(1).devices.size == 1
    with pytest.raises(ValueError, match=f"^make_mesh: num_devices={jax.device_count() + 1}: only "):
        parallel.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="^make_mesh: num_devices must be a positive integer"):
        parallel.make_mesh(0)


def test_data_parallel_spec_sets_the_batch_sharding():
    """The spec gains a batch sharding over the mesh's data axis and stays hashable (a jit static)."""
    mesh = parallel.make_mesh(1)
    spec = parallel.data_parallel_spec(runs.TrainSpec(batch_size=32), mesh)
    assert spec.batch_sharding == parallel.batch_sharding(mesh)
    assert hash(spec) == hash(parallel.data_parallel_spec(runs.TrainSpec(batch_size=32), mesh))
    assert parallel.device_count(None) == 1 and parallel.device_count(mesh) == 1


def test_cli_too_many_devices_is_one_line_error(capsys):
    """--devices beyond what exists fails before any data is read, with one line on stderr."""
    rc = cli.main(["train", "--devices", str(jax.device_count() + 7), "--data-dir", "/nonexistent"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices" in err[0]


# ---------------------------------------------------------------- several processes

WORKER = REPO / "tests" / "_mp_worker.py"
WORKER_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The worker as two processes of one CPU device each (gloo over 127.0.0.1), then as one process
    with two forced host devices: {"p0", "p1", "single"} -> (json dict, list of param arrays)."""
    from conftest import make_synthetic_dataset

    folder = tmp_path_factory.mktemp("multiprocess")
    data = make_synthetic_dataset(n_train=1024, n_test=1000, seed=1)
    np.savez(folder / "data.npz", **data._asdict())
    run = [sys.executable, str(WORKER), str(folder / "data.npz")]
    coordinator = f"127.0.0.1:{free_port()}"
    run_together([run + [str(folder / f"p{i}"), coordinator, "2", str(i)] for i in (0, 1)], folder,
                 timeout_s=WORKER_TIMEOUT_S)
    run_together([run + [str(folder / "single")]], folder, timeout_s=WORKER_TIMEOUT_S,
                 env=worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))

    def load(name):
        with np.load(folder / f"{name}.npz") as f:
            return json.loads((folder / f"{name}.json").read_text()), [f[k] for k in f.files]

    return {name: load(name) for name in ("p0", "p1", "single")}


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(two_processes):
    """Two processes x one device train as one process x two devices: same global batch, same
    shuffle, same updates. float32 and the cross-device gradient sum is the only thing done
    differently (gloo between processes, XLA's in-process all-reduce otherwise): a different
    summation order could move each step by ~1e-7 relative, which 32 SGD steps keep far below the
    1e-5 allowed here; accuracy within 0.3 points of 1000 test images (3 images)."""
    multi, multi_params = two_processes["p0"]
    single, single_params = two_processes["single"]
    assert (single["process_count"], single["device_count"], single["mesh_size"]) == (1, 2, 2)
    assert abs(multi["test_accuracy"] - single["test_accuracy"]) <= 0.003
    assert multi["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)
    assert multi["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert max(float(np.abs(a - b).max()) for a, b in zip(multi_params, single_params)) < 1e-5
    assert multi["losses"][1] < multi["losses"][0] and multi["test_accuracy"] > 0.5  # it trained


@pytest.mark.slow
def test_two_processes_agree_exactly_and_report_themselves(two_processes):
    """Both processes run one SPMD program on one replicated state: bit-identical params and metrics;
    each knows its index, the run's 2 processes and 2 devices, and only process 0 is primary.
    Processes passing different values to ``replicate`` get a ValueError, not a silent mix; a mesh
    leaving a process without a device is a ValueError naming num_devices."""
    (p0, params0), (p1, params1) = two_processes["p0"], two_processes["p1"]
    for i, p in enumerate((p0, p1)):
        assert p["process_index"] == i and p["primary"] == (i == 0)
        assert (p["process_count"], p["device_count"], p["local_device_count"], p["mesh_size"]) == (2, 2, 1, 2)
        assert p["params_replicated"]
        assert "different values" in p["mismatch_error"]
        assert p["one_device_mesh_error"].startswith("make_mesh: num_devices=1: a run of 2 processes")
    for key in ("params_sha256", "params_abs_sum", "test_accuracy", "test_loss", "losses"):
        assert p0[key] == p1[key], key
    assert all(np.array_equal(a, b) for a, b in zip(params0, params1))


def test_initialize_flag_errors_are_one_line_value_errors():
    """Malformed or inconsistent arguments fail before anything is started, naming the argument."""
    cases = [(("localhost", 2, 0), "^initialize: coordinator must be HOST:PORT"),
             (("localhost:0", 2, 0), "^initialize: coordinator must be HOST:PORT"),
             (("localhost:99999", 2, 0), "^initialize: coordinator must be HOST:PORT"),
             (("localhost:1234", 0, 0), "^initialize: num_processes must be a positive integer"),
             (("localhost:1234", 2, 2), r"^initialize: process_id must be an integer in 0\.\.1 \(num_processes=2\)"),
             (("localhost:1234", 2, -1), "^initialize: process_id"),
             (("localhost:1234", 2, None), "^initialize: coordinator, num_processes and process_id go together"),
             (("nohost.invalid:1234", 2, 1), "^initialize: coordinator='nohost.invalid:1234': cannot resolve")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            parallel.initialize(*args, timeout_s=1)
        assert "\n" not in str(info.value)


def test_initialize_unreachable_coordinator_times_out():
    """A process other than 0 whose coordinator never answers gives up after timeout_s with a
    ValueError naming coordinator (JAX alone would abort the whole process)."""
    coordinator = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=f"^initialize: coordinator='{coordinator}': no coordinator answered "
                                         f"within 1 s"):
        parallel.initialize(coordinator, 2, 1, timeout_s=1)
    assert time.monotonic() - t0 < 10


def test_initialize_coordinator_port_taken():
    """Process 0 must serve the coordinator: a port already in use is a ValueError naming
    coordinator (JAX alone would crash the process)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        coordinator = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(ValueError, match=f"^initialize: coordinator='{coordinator}': process 0 cannot listen"):
            parallel.initialize(coordinator, 2, 0, timeout_s=1)


def test_initialize_after_devices_are_in_use():
    """Called after JAX started its backend (too late), initialize says so in one line."""
    jax.devices()
    with pytest.raises(ValueError, match="^initialize: .*must be called before") as info:
        parallel.initialize(f"127.0.0.1:{free_port()}", 1, 0, timeout_s=1)
    assert "\n" not in str(info.value)


def test_initialize_without_flags_outside_a_cluster():
    """No arguments and no cluster launcher to detect: a one-line error saying which arguments to give.
    (A fresh process: the suite's own has already started JAX.)"""
    env = {k: v for k, v in worker_env().items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORD"))}
    code = "from jaxmlp import parallel\ntry:\n    parallel.initialize()\nexcept ValueError as e:\n    print(e)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=WORKER_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("initialize: no cluster launcher detected")


def test_process_info_and_to_host_in_one_process():
    """Without initialize: one process, it is primary, and to_host copies a PyTree to NumPy."""
    info = parallel.process_info()
    assert info["process_index"] == 0 and info["process_count"] == 1
    assert info["device_count"] == jax.device_count() and info["local_device_count"] == jax.local_device_count()
    assert parallel.is_primary()
    tree = {"W": jax.numpy.ones((2, 3)), "step": 4}
    host = parallel.to_host(tree)
    assert isinstance(host["W"], np.ndarray) and host["W"].shape == (2, 3) and int(host["step"]) == 4


def test_mesh_for_one_process():
    """One process: no mesh for one device (or no --devices), a mesh for more; too many fails."""
    assert parallel.mesh_for(None) is None and parallel.mesh_for(1) is None
    if jax.device_count() > 1:
        assert parallel.device_count(parallel.mesh_for(jax.device_count())) == jax.device_count()
    with pytest.raises(ValueError, match="^make_mesh: num_devices="):
        parallel.mesh_for(jax.device_count() + 1)


def test_place_puts_arrays_and_shapes_where_their_specs_say():
    """``place`` follows a prefix tree of PartitionSpecs: arrays land with those shardings, abstract
    ShapeDtypeStructs come back carrying them (what a sharded program compiles from); a mesh for a
    sweep's models has the axis "members"."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = parallel.make_mesh(1, axis=parallel.MEMBER_AXIS)
    assert mesh.axis_names == ("members",) and parallel.make_mesh(1).axis_names == ("data",)
    tree = {"w": jax.numpy.ones((2, 3)), "step": jax.numpy.zeros((), jax.numpy.int32)}
    specs = {"w": PartitionSpec("members"), "step": PartitionSpec()}
    placed = parallel.place(tree, mesh, specs)
    assert placed["w"].sharding == NamedSharding(mesh, PartitionSpec("members"))
    assert placed["step"].sharding == NamedSharding(mesh, PartitionSpec())
    assert np.array_equal(placed["w"], tree["w"])
    shapes = parallel.place(jax.eval_shape(lambda: tree), mesh, specs)
    assert isinstance(shapes["w"], jax.ShapeDtypeStruct) and shapes["w"].shape == (2, 3)
    assert shapes["w"].sharding == placed["w"].sharding
    assert parallel.replicate(tree, mesh)["w"].sharding == NamedSharding(mesh, PartitionSpec())
