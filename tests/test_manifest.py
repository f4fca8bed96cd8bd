"""Run manifests and ``jaxmlp verify``: a fresh manifest verifies, a changed epoch hash is named, the
environment's differences are reported, and changed data is refused naming the file."""
from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_synthetic_dataset

from jaxmlp import manifest
from jaxmlp.cli import main
from jaxmlp.data import write_idx
from jaxmlp.runs import load_run

SMALL = ["--hidden", "16", "--init", "he", "--epochs", "2", "--quiet"]


def run(*argv) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write_dataset(folder: Path) -> Path:
    """The synthetic dataset as the four MNIST-named IDX files."""
    d = make_synthetic_dataset(n_train=256, n_test=64)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in (("train", d.x_train, d.y_train), ("t10k", d.x_test, d.y_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    """A 2-epoch run's manifest (with --augment elastic and --max-norm, so their settings are recorded too)."""
    path = tmp_path_factory.mktemp("run") / "run.json"
    rc, _, err = run("train", "--data-dir", data_dir, *SMALL, "--augment", "elastic", "--max-norm", "2",
                     "--manifest", path)
    assert rc == 0, err
    return path


def test_params_hash_sees_every_bit_and_the_dtype():
    """The hash changes with one ulp of one weight and with the dtype; equal params hash equally."""
    params = [{"W": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}]
    same = [{"W": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": jnp.zeros(3, jnp.float32)}]
    assert manifest.params_sha256(params) == manifest.params_sha256(same)
    nudged = [{"W": params[0]["W"].copy(), "b": params[0]["b"]}]
    nudged[0]["W"][1, 2] = np.nextafter(nudged[0]["W"][1, 2], np.float32(10))
    assert manifest.params_sha256(nudged) != manifest.params_sha256(params)
    as_int = [{"W": params[0]["W"].view(np.int32), "b": params[0]["b"].view(np.int32)}]
    assert manifest.params_sha256(as_int) != manifest.params_sha256(params)


def test_the_manifest_records_the_run(trained):
    """Config, data SHA-256s, versions, device, CPU, XLA flags, seed and one hash and loss per epoch."""
    m = json.loads(trained.read_text())
    assert m["kind"] == "train" and m["seed"] == 42
    assert m["config"]["augment"] == "elastic" and m["config"]["max_norm"] == 2.0
    assert [f["name"] for f in m["data"]["files"]] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz"]
    assert all(len(f["sha256"]) == 64 and len(f["content_sha256"]) == 64 for f in m["data"]["files"])
    assert {"python", "jax", "jaxlib", "numpy", "backend", "device", "cpu", "xla_flags"} <= set(m["environment"])
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert all(len(e["params_sha256"]) == 64 and np.isfinite(e["loss"]) for e in m["epochs"])
    assert m["epochs"][0]["params_sha256"] != m["epochs"][1]["params_sha256"]


def test_verify_passes_on_a_fresh_manifest(trained, data_dir):
    rc, out, err = run("verify", trained, "--data-dir", data_dir)
    assert rc == 0, err
    assert "every epoch's params are bit-identical" in out and "(2 epochs)" in out
    assert "epoch 2: loss" in err  # a progress line per rerun epoch


def test_verify_names_the_epoch_whose_hash_changed(trained, data_dir, tmp_path):
    """One epoch's hash edited: exit 1, that epoch named, and the environment reported as the same."""
    m = json.loads(trained.read_text())
    m["epochs"][1]["params_sha256"] = "0" * 64
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(m))
    rc, out, _ = run("verify", edited, "--data-dir", data_dir, "--quiet")
    assert rc == 1
    assert "epoch 2 is the first whose params differ" in out
    assert "environment: the same as the manifest's" in out


def test_verify_reports_what_in_the_environment_differs(trained, data_dir, tmp_path):
    m = json.loads(trained.read_text())
    m["epochs"][0]["params_sha256"] = "f" * 64
    m["environment"]["jax"], m["environment"]["xla_flags"] = "0.0.1", "--xla_cpu_some_flag=true"
    edited = tmp_path / "other-machine.json"
    edited.write_text(json.dumps(m))
    rc, out, _ = run("verify", edited, "--data-dir", data_dir, "--quiet")
    assert rc == 1 and "epoch 1 is the first" in out
    assert "environment differences: jax: '0.0.1' ->" in out and "xla_flags: '--xla_cpu_some_flag=true' -> ''" in out


def test_verify_refuses_other_data_naming_the_file(trained, data_dir, tmp_path):
    other = write_dataset(tmp_path / "other")
    labels = make_synthetic_dataset(n_train=256, n_test=64).y_test.copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(other / "t10k-labels-idx1-ubyte.gz", labels)
    rc, _, err = run("verify", trained, "--data-dir", other)
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "t10k-labels-idx1-ubyte.gz" in err and "differ from the manifest" in err


def test_not_a_manifest_is_one_line(tmp_path, data_dir):
    bad = tmp_path / "bad.json"
    bad.write_text('{"manifest_version": 1, "kind": "train"}')
    rc, _, err = run("verify", bad, "--data-dir", data_dir)
    assert rc == 1 and len(err.splitlines()) == 1 and "bad.json" in err


def test_notebook_exact_manifest_verifies(tmp_path, data_dir):
    """--notebook-exact --manifest: the float64 notebook run's manifest, rerun bit for bit."""
    path = tmp_path / "nb.json"
    rc, out, err = run("train", "--notebook-exact", "--data-dir", data_dir, "--hidden", "16", "--epochs", "2",
                       "--quiet", "--manifest", path)
    assert rc == 0, err
    m = json.loads(path.read_text())
    assert m["kind"] == "notebook" and m["group"] == [0.1] and len(m["epochs"]) == 2
    rc, out, err = run("verify", path, "--data-dir", data_dir, "--quiet")
    assert rc == 0, err + out
    assert "bit-identical" in out


def test_ensemble_refuses_a_manifest(tmp_path, data_dir):
    rc, _, err = run("train", "--data-dir", data_dir, "--ensemble", "2", "--manifest", tmp_path / "m.json")
    assert rc != 0 and "--manifest" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- early stopping: the stopping epoch everywhere

EARLY = ["--hidden", "16", "--init", "he", "--epochs", "12", "--lr", "1.5", "--val-split", "0.25", "--patience", "2"]


def test_an_early_stopped_run_logs_saves_and_records_its_stopping_epoch(tmp_path, data_dir):
    """--patience with --save, --log and --manifest (issue 28): the epoch that triggered the stop is in the
    progress lines, the JSONL log, the manifest (which verifies) and the checkpoint, and `jaxmlp eval --load`
    scores the model train reported (the best validation epoch's), not the stopping epoch's."""
    ckpt, log, path = tmp_path / "es.npz", tmp_path / "log.jsonl", tmp_path / "es.json"
    rc, out, err = run("train", "--data-dir", data_dir, *EARLY, "--save", ckpt, "--log", log, "--manifest", path)
    assert rc == 0, err
    logged = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    stop = logged[-1]
    assert 2 < stop < 12 and logged == list(range(1, stop + 1))
    assert f"Epoch {stop}/12 - Loss:" in err
    assert [e["epoch"] for e in json.loads(path.read_text())["epochs"]] == logged
    assert int(load_run(ckpt)[1].epoch) == stop
    rc, evaluated, err = run("eval", "--load", ckpt, "--data-dir", data_dir, "--quiet")
    assert rc == 0, err
    assert re.search(r"Test Accuracy: .*%", evaluated)[0] == re.search(r"Test Accuracy: .*%", out)[0]
    rc, verified, err = run("verify", path, "--data-dir", data_dir, "--quiet")
    assert rc == 0 and "bit-identical" in verified, err + verified


def test_an_early_stopped_fit_checkpoints_the_model_it_tests(tmp_path):
    """fit with the CLI's handlers: the checkpoint resumes from the stopping epoch's state, and
    ``load_model`` gives the params fit returned and tested (the best epoch's, kept beside it), so
    evaluating them gives fit's test accuracy exactly."""
    from jaxmlp.config import TrainConfig
    from jaxmlp.evaluation import evaluate
    from jaxmlp.handlers import Checkpointer, JsonlLog, ProgressReport
    from jaxmlp.runs import fit, load_model, prepare

    data, lines = make_synthetic_dataset(n_train=256, n_test=64), io.StringIO()
    ckpt = tmp_path / "es.npz"
    config = TrainConfig(hidden=(16,), init="he", epochs=12, lr=1.5, val_split=0.25, patience=2)
    result = fit(config, data, handlers=[ProgressReport(stream=lines), JsonlLog(tmp_path / "log.jsonl"),
                                         Checkpointer(ckpt)])
    stop = result.history[-1]["epoch"]
    best = max(result.history, key=lambda r: r["val_accuracy"])["epoch"]
    assert result.stopped_early and best < stop and f"Epoch {stop}/12" in lines.getvalue()
    state = load_run(ckpt)[1]
    assert int(state.epoch) == stop
    model, loaded = load_model(ckpt)[:2]
    for mine, theirs, last in zip(loaded, result.params, state.params):
        np.testing.assert_array_equal(np.asarray(mine["W"]), np.asarray(theirs["W"]))
        assert not np.array_equal(np.asarray(mine["W"]), np.asarray(last["W"]))
    _, acc = evaluate(model, loaded, prepare(data.x_test, jnp.float32), jnp.asarray(data.y_test.astype(np.int32)))
    assert acc == result.test_accuracy


def test_a_checkpoint_names_its_best_params_only_beside_itself(tmp_path):
    """``partial["best"]`` must name a file in the checkpoint's folder that holds params of exactly the
    state's shapes; anything else is a CheckpointError naming the file, and without it the state's params
    are the model."""
    from jaxmlp.checkpoint import CheckpointError, save_checkpoint
    from jaxmlp.handlers import best_params, best_path

    params = [{"W": jnp.ones((3, 2)), "b": jnp.zeros(2)}]
    ckpt = tmp_path / "es.npz"
    assert best_path(ckpt) == tmp_path / "es.best.npz"
    assert best_params(ckpt, {"partial": {}}, params) is params
    save_checkpoint(best_path(ckpt), [{"W": jnp.full((3, 2), 2.0), "b": jnp.ones(2)}], {"best_epoch": 1})
    got = best_params(ckpt, {"partial": {"best": {"epoch": 1, "file": "es.best.npz"}}}, params)
    assert float(got[0]["W"][0, 0]) == 2.0
    for bad in ("../es.best.npz", "..", "", None, "missing.npz"):
        with pytest.raises(CheckpointError, match="es.npz|missing.npz"):
            best_params(ckpt, {"partial": {"best": {"file": bad}}}, params)
    with pytest.raises(CheckpointError, match="es.best.npz"):
        best_params(ckpt, {"partial": {"best": {"file": "es.best.npz"}}}, [{"W": jnp.ones((4, 2)), "b": jnp.zeros(2)}])
