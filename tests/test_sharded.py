"""Sweeps and ensembles over several devices and processes: a group's members split over a
``"members"`` mesh train to the same bits as on one device.

XLA_FLAGS must be set before jax initialises, so the multi-device checks run in a subprocess started
with ``--xla_force_host_platform_device_count=4``; it prints one JSON line that the tests inspect. The
multi-process check starts ``jaxmlp sweep`` twice on 127.0.0.1 (one CPU device each, gloo collectives)
and once alone, each under a timeout, and compares what they print and write.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _processes import free_port, run_together

from jaxmlp import groups, members, parallel
from jaxmlp.config import TrainConfig
from jaxmlp.data import write_idx

REPO = Path(__file__).resolve().parents[1]
LRS = ["0.01", "0.03", "0.1", "0.3"]
GRID = ["--lr", *LRS, "--seed", "1", "2", "3", "--epochs", "1", "--hidden", "16"]

PRELUDE = """
import contextlib, dataclasses, io, json, re, sys
import jax, jax.numpy as jnp, numpy as np
from jaxmlp import cli, engine, groups, members, parallel, runs
from jaxmlp.config import TrainConfig

folder, grid = sys.argv[1], json.loads(sys.argv[2])
out = {"device_count": jax.device_count()}
with np.load(f"{folder}/data.npz") as f:
    images, labels = f["x"], f["y"].astype(np.int32)
"""

CLI_SCRIPT = PRELUDE + textwrap.dedent("""
    def printed(argv):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(argv)
        return rc, buf.getvalue()

    sweeping, ensembling = (1, 1) if out["device_count"] == 1 else (4, 2)
    sweep = ["sweep", "--data-dir", folder, *grid, "--quiet", "--devices", str(sweeping)]
    out["sweep"] = printed(sweep + ["--metrics-out", f"{folder}/sweep{sweeping}.json"])
    ensemble = ["train", "--data-dir", folder, "--ensemble", "5", "--epochs", "1", "--hidden", "16", "--quiet"]
    out["ensemble"] = printed(ensemble + ["--devices", str(ensembling), "--metrics-out",
                                          f"{folder}/ensemble{ensembling}.json"])
    if out["device_count"] == 1:
        print("RESULT " + json.dumps(out))
        sys.exit(0)

    # SIGTERM after epoch 1 on 4 devices (saved), resumed on 2: the table of an unstopped run on 1.
    import os, signal
    from jaxmlp.cli import sweep as cli_sweep
    stopping = ["sweep", "--data-dir", folder, "--lr", "0.03", "0.3", "--seed", "1", "2", "3", "--epochs", "2",
                "--hidden", "16", "--quiet"]
    out["unstopped"] = printed(stopping + ["--devices", "1"])
    on_epoch = cli_sweep.SweepProgress.on_epoch
    def signalled(self, g, epoch, losses):
        on_epoch(self, g, epoch, losses)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    cli_sweep.SweepProgress.on_epoch = signalled
    out["stopped"] = printed(stopping + ["--devices", "4", "--chunk-steps", "5", "--save", f"{folder}/stop.npz"])
    cli_sweep.SweepProgress.on_epoch = on_epoch
    out["resumed"] = printed(["sweep", "--resume", f"{folder}/stop.npz", "--data-dir", folder, "--quiet",
                              "--devices", "2"])

    # The program: each device holds 2 of the 8 members and nothing crosses devices.
    mesh = parallel.make_mesh(4, axis=parallel.MEMBER_AXIS)
    base = TrainConfig(hidden=(16,), batch_size=32)
    configs = [dataclasses.replace(base, lr=0.1, seed=s) for s in range(8)]
    spec = runs.spec_for(base, len(labels))
    state, hp = members.init_members(configs, 784, 10, spec, mesh=mesh)
    w = state.params[0]["W"]
    out["placed"] = [w.sharding.spec == jax.sharding.PartitionSpec("members"), len(w.sharding.device_set),
                     list(w.addressable_shards[0].data.shape)]
    order = members.group_order(state.key, state.epoch, len(labels))
    steps = engine.steps_per_epoch(len(labels), 32)
    xs, ys = parallel.replicate((runs.prepare(images, np.float32), jnp.asarray(labels)), mesh)
    hlo = members.run_group_chunk.lower(state, order, xs, ys, hp, parallel.replicate(jnp.int32(steps), mesh),
                                        spec=spec, capacity=steps, mesh=mesh).compile().as_text()
    out["collectives"] = sorted(set(re.findall(r"all-reduce|all-gather|all-to-all|collective-permute", hlo)))
    out["per_device_members"] = "f32[2,784,16]" in hlo and "f32[8,784,16]" not in hlo
    print("RESULT " + json.dumps(out))
""")

LIBRARY_SCRIPT = PRELUDE + textwrap.dedent("""
    # float64, through train_group: a shared shuffle (3 lrs of one seed, momentum) on 1, 2 and 4 devices
    # (padded to 4 and 8), and per-member shuffles and init schemes (4 members) on 1 and 4 (padded to 8).
    base = TrainConfig(hidden=(16,), epochs=2, batch_size=32, dtype="float64")
    cases = {"shared": [dataclasses.replace(base, optimizer="momentum", momentum=0.9, lr=lr, seed=5)
                        for lr in (0.3, 0.1, 0.03)],
             "own": [dataclasses.replace(base, lr=lr, seed=s, init=i)
                     for lr, s, i in ((0.3, 5, "he"), (0.03, 6, "glorot"), (0.1, 7, "he"), (0.3, 8, "glorot"))]}
    same = {}
    with engine.precision("float64"):
        x, y = runs.prepare(images, np.float64), jnp.asarray(labels)
        for name, configs in cases.items():
            counts = (1, 2, 4) if name == "shared" else (1, 4)
            results = {n: groups.train_group(configs, x, y, mesh=None if n == 1 else
                                               parallel.make_mesh(n, axis=parallel.MEMBER_AXIS)) for n in counts}
            one = results[1]
            for n in counts[1:]:
                got = results[n]
                leaves = zip(jax.tree_util.tree_leaves((one.params, one.opt_state)),
                             jax.tree_util.tree_leaves((got.params, got.opt_state)))
                same[f"{name}/{n}"] = {
                    "params": all(a.shape == b.shape and np.array_equal(a, b) for a, b in leaves),
                    "history": bool(np.array_equal(one.history, got.history)),
                    "members": int(got.history.shape[0]), "shared_key": bool(got.shared_key)}
            out[f"trained/{name}"] = bool(np.all(one.history[:, 1] < one.history[:, 0]))
    out["float64"] = same

    print("RESULT " + json.dumps(out))
""")


def _write_dataset(folder: Path, n_train: int = 500, n_test: int = 200) -> None:
    """Random uint8 digits with pixel-dependent labels as the four IDX files (and data.npz, the training
    half), so the CLI reads them with --data-dir."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = (x[:, 10:18, 10:18].mean(axis=(1, 2)) // 26).clip(0, 9).astype(np.uint8)
    for name, arr in (("train-images-idx3-ubyte", x[:n_train]), ("train-labels-idx1-ubyte", y[:n_train]),
                      ("t10k-images-idx3-ubyte", x[n_train:]), ("t10k-labels-idx1-ubyte", y[n_train:])):
        write_idx(folder / name, arr)
    np.savez(folder / "data.npz", x=x[:n_train], y=y[:n_train])


def _on_four_devices(script: str, folder: Path, devices: int = 4) -> dict:
    """``script``'s RESULT line, run in a process with ``devices`` forced host devices (1: a plain
    process) on the data in ``folder``."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = "cpu"
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run([sys.executable, "-c", script, str(folder), json.dumps(GRID)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded")
    _write_dataset(folder)
    return folder


@pytest.fixture(scope="module")
def four_devices(data_folder):
    """The command line's sweep and ensemble in a plain process with one device, then on 4 (the ensemble
    on 2) of 4 forced host devices: {1: result, 4: result}."""
    return {n: _on_four_devices(CLI_SCRIPT, data_folder, n) for n in (1, 4)}, data_folder


@pytest.fixture(scope="module")
def four_devices_library(data_folder):
    """train_group in float64 on 1, 2 and 4 of 4 forced host devices, and the compiled sharded program."""
    return _on_four_devices(LIBRARY_SCRIPT, data_folder), data_folder


def test_sweep_on_4_devices_prints_the_one_device_table(four_devices):
    """`jaxmlp sweep --lr 0.01 0.03 0.1 0.3 --seed 1 2 3 --devices 4` on 4 forced host devices prints,
    digit for digit, the table of the run in a plain one-device process (12 members, 3 a device, each
    its own shuffle), and its JSON holds the same runs and says 4 devices."""
    out, folder = four_devices
    assert (out[1]["device_count"], out[4]["device_count"]) == (1, 4)
    (rc1, table1), (rc4, table4) = out[1]["sweep"], out[4]["sweep"]
    assert rc1 == rc4 == 0
    assert table4 == table1 and len(table1.splitlines()) == 2 + 12
    one, four = (json.loads((folder / f"sweep{n}.json").read_text()) for n in (1, 4))
    assert (one["devices"], four["devices"]) == (1, 4)
    assert one["runs"] == four["runs"] and four["num_configs"] == 12


def test_a_sweep_stopped_on_4_devices_resumes_on_2_to_the_one_device_table(four_devices):
    """SIGTERM after the first of 2 epochs stops a 6-member sweep on 4 devices (exit 143, nothing
    printed, its checkpoint saved); `--resume` on 2 devices prints the table of the unstopped sweep on
    one device, digit for digit."""
    out = four_devices[0][4]
    assert out["stopped"] == [128 + 15, ""]
    rc, table = out["unstopped"]
    assert rc == 0 and len(table.splitlines()) == 2 + 6
    assert out["resumed"] == [0, table]


def test_ensemble_of_5_over_2_devices_pads_and_reports_5(four_devices):
    """`jaxmlp train --ensemble 5 --devices 2` trains 6 members (3 a device, the last seed's twin as
    padding) and reports exactly the 5 of the plain one-device run: the same lines and JSON members."""
    out, folder = four_devices
    (rc1, text1), (rc2, text2) = out[1]["ensemble"], out[4]["ensemble"]
    assert rc1 == rc2 == 0 and text2 == text1
    assert [line.split(":")[0] for line in text2.splitlines()[:5]] == [f"member seed {s}" for s in range(42, 47)]
    assert len(text2.splitlines()) == 6 and text2.splitlines()[-1].startswith("Ensemble of 5 (averaged probabilities)")
    metrics = json.loads((folder / "ensemble2.json").read_text())
    assert metrics["devices"] == 2 and metrics["ensemble"] == 5 and len(metrics["members"]) == 5
    assert metrics["members"] == json.loads((folder / "ensemble1.json").read_text())["members"]


def test_members_are_bit_identical_on_1_2_and_4_devices(four_devices_library):
    """float64, two epochs: each member's params, optimizer state and history are the same bits on 2
    and 4 devices as on one with a shared shuffle (3 members of momentum SGD, padded to 4 and 8), and
    on 4 with each member's own shuffle and init scheme (4 members, padded to 8); the padding is in no
    result."""
    out, _ = four_devices_library
    assert out["trained/shared"] and out["trained/own"]
    for name, size, counts in (("shared", 3, (2, 4)), ("own", 4, (4,))):
        for n in counts:
            got = out["float64"][f"{name}/{n}"]
            assert got == {"params": True, "history": True, "members": size, "shared_key": name == "shared"}, (name, n)


def test_the_sharded_program_splits_members_and_communicates_nothing(four_devices):
    """init_members on a 4-device mesh places each member's state on one device (8 members, 2 a
    device); the compiled group program works on 2-member slices and has no collective."""
    out = four_devices[0][4]
    assert out["placed"] == [True, 4, [2, 784, 16]]
    assert out["per_device_members"] and out["collectives"] == []


# ---------------------------------------------------------------- in this process


def test_padding_keeps_two_members_a_device():
    """Copies of the last configuration pad a group to a multiple of the devices, at least two a device
    (a one-member slice would compile differently); one member stays alone."""
    configs = [TrainConfig(lr=lr) for lr in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert members.padded(configs, 1) == configs
    assert members.padded(configs, 2) == [*configs, configs[-1]]
    assert members.padded(configs, 4) == [*configs, *[configs[-1]] * 3]
    assert members.padded(configs[:3], 4) == [*configs[:3], *[configs[2]] * 5]
    assert members.padded(configs[:1], 4) == [configs[0]] * 4


def test_a_sweep_mesh_needs_the_members_axis():
    """train_group refuses a data-parallel mesh with a one-line ValueError naming the axis it needs."""
    import jax

    x, y = jax.numpy.zeros((64, 784)), jax.numpy.zeros((64,), jax.numpy.int32)
    with pytest.raises(ValueError, match=r"^mesh: a sweep's mesh needs an axis named 'members'"):
        groups.train_group([TrainConfig(hidden=(4,), epochs=1)], x, y, mesh=parallel.make_mesh(1))


def test_group_options_keep_ynnpack_to_products_on_cpu_only():
    """On a CPU (where XLA knows the option) the group program leaves YNNPACK only its matrix products;
    elsewhere it compiles with XLA's defaults."""
    assert members.group_options("gpu") is None
    assert members.group_options("cpu") in (
        None, {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"})


# ---------------------------------------------------------------- several processes

WORKER_TIMEOUT_S = 180


@pytest.mark.slow
def test_two_processes_print_the_one_device_table(tmp_path):
    """The same sweep (with a learning rate that diverges) as two processes of one CPU device each over
    127.0.0.1: process 0 prints the table of one process with one device, digit for digit, writes the
    JSON and names each diverged member once; process 1 prints and writes nothing."""
    _write_dataset(tmp_path)
    sweep = [sys.executable, "-m", "jaxmlp", "sweep", "--data-dir", str(tmp_path), "--lr", *LRS, "30",
             *GRID[1 + len(LRS):]]
    coordinator = f"127.0.0.1:{free_port()}"
    (_, out0, err0), (_, out1, err1) = run_together(
        [[*sweep, "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i),
          "--metrics-out", str(tmp_path / f"m{i}.json")] for i in (0, 1)], tmp_path, timeout_s=WORKER_TIMEOUT_S)
    ((_, alone, _),) = run_together([[*sweep, "--quiet"]], tmp_path, timeout_s=WORKER_TIMEOUT_S)
    assert alone.splitlines()[0].split() == ["rank", "lr", "seed", "final", "loss", "test", "acc"]
    assert out0 == alone and out1 == ""
    assert sum("diverged" in line for line in alone.splitlines()) == 3
    assert [line.strip() for line in err0.splitlines() if "diverged in epoch" in line] == [
        f"diverged in epoch 1: lr 30, seed {s}" for s in (1, 2, 3)]
    assert "diverged in epoch" not in err1
    metrics = json.loads((tmp_path / "m0.json").read_text())
    assert (metrics["devices"], metrics["process_count"], metrics["num_configs"]) == (2, 2, 15)
    assert not (tmp_path / "m1.json").exists()


# Process 1 sends itself SIGTERM after epoch 1 (a sweep's, or a training run's), then runs the command.
SIGTERM_ON_PROCESS_1 = textwrap.dedent("""
    import os, signal, sys
    from jaxmlp import cli, handlers
    from jaxmlp.cli import sweep as cli_sweep

    argv = sys.argv[1:]
    def hit(epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    if argv[argv.index("--process-id") + 1] == "1":
        on_epoch, report = cli_sweep.SweepProgress.on_epoch, handlers.ProgressReport.__call__
        cli_sweep.SweepProgress.on_epoch = lambda self, g, e, losses: (on_epoch(self, g, e, losses), hit(e))
        handlers.ProgressReport.__call__ = lambda self, event: (
            report(self, event), event.kind == "epoch" and hit(int(event.state.epoch)))
    sys.exit(cli.main(argv))
""")


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_at_one_step_and_the_sweep_resumes(tmp_path):
    """SIGTERM reaching only process 1 of a 2-process sweep stops both after the same epoch (exit 143;
    process 0 says where and saves); the checkpoint resumed by one process alone prints the unstopped
    sweep's table, digit for digit. A 2-process training run stopped the same way ends both processes
    at the same step too (each says where)."""
    _write_dataset(tmp_path)
    sweep = ["sweep", "--data-dir", str(tmp_path), "--lr", "0.03", "0.3", "--seed", "1", "2", "--epochs", "2",
             "--hidden", "16", "--quiet"]
    jaxmlp = [sys.executable, "-m", "jaxmlp"]
    ((_, want, _),) = run_together([[*jaxmlp, *sweep]], tmp_path, timeout_s=WORKER_TIMEOUT_S)
    for command in (sweep, ["train", "--data-dir", str(tmp_path), "--epochs", "2", "--hidden", "16", "--quiet"]):
        coordinator = f"127.0.0.1:{free_port()}"
        (rc0, out0, err0), (rc1, out1, err1) = run_together(
            [[sys.executable, "-c", SIGTERM_ON_PROCESS_1, *command, "--save", str(tmp_path / f"{command[0]}.npz"),
              "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)] for i in (0, 1)],
            tmp_path, timeout_s=WORKER_TIMEOUT_S, ok=(128 + 15,))
        assert (rc0, rc1, out0, out1) == (143, 143, "", "")
        said = [line for line in err0.splitlines() if line.startswith("jaxmlp: ")]
        if command is sweep:
            assert said == [f"jaxmlp: sweep interrupted by SIGTERM in group 1/1, after epoch 1; saved in "
                            f"{tmp_path / 'sweep.npz'} (continue with --resume {tmp_path / 'sweep.npz'})"]
        else:
            assert said[0].startswith("jaxmlp: interrupted by SIGTERM after epoch 1; saved in")
            assert [line for line in err1.splitlines() if line.startswith("jaxmlp: ")] == [
                "jaxmlp: interrupted by SIGTERM after epoch 1"]
    ((_, resumed, _),) = run_together([[*jaxmlp, "sweep", "--resume", str(tmp_path / "sweep.npz"), "--data-dir",
                                        str(tmp_path), "--quiet"]], tmp_path, timeout_s=WORKER_TIMEOUT_S)
    assert resumed == want and len(want.splitlines()) == 2 + 4
