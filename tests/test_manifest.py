"""Run manifests and ``jaxmlp verify``: a fresh manifest verifies, a changed epoch hash is named, the
environment's differences are reported, and changed data is refused naming the file."""
from __future__ import annotations

import hashlib
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_synthetic_dataset

from jaxmlp import manifest, manifest_schema
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


# ---------------------------------------------------------------- what verify refuses (issue 29 item 9)


def refused(path: Path, data_dir: Path) -> str:
    """``jaxmlp verify path``'s one-line refusal (exit 1, no traceback), which names the file."""
    rc, out, err = run("verify", path, "--data-dir", data_dir, "--quiet")
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1, (rc, out, err)
    assert str(path) in err and not out, err
    return err


def edited(source: Path, folder: Path, edit) -> Path:
    """A copy of manifest ``source`` in ``folder`` with ``edit(manifest)`` applied."""
    m = json.loads(source.read_text())
    edit(m)
    path = folder / "edited.json"
    path.write_text(json.dumps(m))
    return path


SOURCE = ["--hidden", "16", "--init", "he", "--epochs", "1", "--quiet"]  # a checkpoint to fine-tune from


def test_a_finetune_source_is_recorded_by_absolute_path_and_hash(tmp_path, data_dir, monkeypatch):
    """train --finetune SRC (a relative path) --manifest: SRC is recorded by absolute path and SHA-256; verify
    from another working folder passes; after SRC changes (or goes), verify refuses before rerunning, naming
    SRC, instead of reporting an epoch as different with the environment the same."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    rc, _, err = run("train", "--data-dir", data_dir, *SOURCE, "--save", "src.npz")
    assert rc == 0, err
    rc, _, err = run("train", "--data-dir", data_dir, "--finetune", "src.npz", "--epochs", "2", "--quiet",
                     "--manifest", "ft.json")
    assert rc == 0, err
    source = (work / "src.npz").resolve()
    m = json.loads((work / "ft.json").read_text())
    assert m["config"]["finetune"] == str(source)
    assert m["inputs"] == [{"path": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}]

    monkeypatch.chdir(elsewhere)
    rc, out, err = run("verify", work / "ft.json", "--data-dir", data_dir, "--quiet")
    assert rc == 0 and "bit-identical" in out and "(2 epochs)" in out, err + out

    monkeypatch.chdir(work)  # another source under the same name: a valid checkpoint, other params
    rc, _, err = run("train", "--data-dir", data_dir, *SOURCE, "--seed", "7", "--save", "src.npz")
    assert rc == 0, err
    monkeypatch.chdir(elsewhere)
    err = refused(work / "ft.json", data_dir)
    assert f"fine-tune source {source}: sha256 differs from the manifest's (the run's input changed)" in err
    source.unlink()
    assert f"fine-tune source {source}: missing" in refused(work / "ft.json", data_dir)


def test_a_finetune_manifest_must_record_its_source(tmp_path, data_dir):
    """A fine-tune config without its source in ``inputs``, or inputs a config does not read: refused."""
    src = tmp_path / "src.npz"
    rc, _, err = run("train", "--data-dir", data_dir, *SOURCE, "--save", src)
    assert rc == 0, err
    rc, _, err = run("train", "--data-dir", data_dir, "--finetune", src, "--epochs", "1", "--quiet", "--manifest",
                     tmp_path / "ft.json")
    assert rc == 0, err
    no_inputs = edited(tmp_path / "ft.json", tmp_path, lambda m: m.pop("inputs"))
    assert "config.finetune: the fine-tune source" in refused(no_inputs, data_dir)
    relative = edited(tmp_path / "ft.json", tmp_path, lambda m: m["inputs"][0].update(path="src.npz"))
    assert "inputs[0].path: expected an absolute path" in refused(relative, data_dir)


def _drop_last_epoch(m: dict) -> None:
    m["epochs"].pop()


EDITS = {  # name: (edit, what the refusal says)
    "seed": (lambda m: m.update(seed=7), "seed: 7 disagrees with config.seed 42"),
    "seed as text": (lambda m: m.update(seed="42"), "seed: '42' disagrees with config.seed 42"),
    "empty data": (lambda m: m["data"].update(files=[]), "data.files: expected a list of the data files"),
    "data cut short": (lambda m: m["data"]["files"].pop(), "data.files lists 3 files, mnist has 4"),
    "dataset": (lambda m: m["data"].update(dataset="fashion"), "data.dataset: expected config.dataset, 'mnist'"),
    "unknown field": (lambda m: m.update(comment="fine"), "the manifest: unknown field 'comment'"),
    "missing field": (lambda m: m.pop("environment"), "the manifest: the field 'environment' is missing"),
    "config text": (lambda m: m["config"].update(epochs="2"), "config.epochs: expected an integer, got '2'"),
    "config unknown": (lambda m: m["config"].update(speed=2), "config: unknown setting 'speed'"),
    "epoch number": (lambda m: m["epochs"][1].update(epoch=3), "epochs[1].epoch: expected 2"),
    "epoch text": (lambda m: m["epochs"][0].update(epoch="1"), "epochs[0].epoch: expected an epoch"),
    "loss text": (lambda m: m["epochs"][0].update(loss="0.5"), "epochs[0].loss: expected a number, got '0.5'"),
    "hash": (lambda m: m["epochs"][0].update(params_sha256="A" * 64), "epochs[0].params_sha256: expected a 64-digit"),
    "devices": (lambda m: m.update(devices="1"), "devices: expected a positive integer, got '1'"),
    "version": (lambda m: m.update(manifest_version=True), "manifest_version is True"),
    "epochs cut short": (_drop_last_epoch, "epochs: the manifest ends at epoch 1, but its run goes on to epoch 2"),
}


@pytest.mark.parametrize("name", EDITS)
def test_an_edited_manifest_never_verifies(name, trained, data_dir, tmp_path):
    """Each hand edit of a real manifest is refused in one line naming the file and the field: fields that
    restate the config must agree with it, no field is unknown or of another type, the data list is complete,
    and the epochs go on to where the run does."""
    edit, says = EDITS[name]
    assert says in refused(edited(trained, tmp_path, edit), data_dir)


@pytest.fixture(scope="module")
def notebook_manifest(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("nb") / "nb.json"
    rc, _, err = run("train", "--notebook-exact", "--data-dir", data_dir, "--hidden", "16", "--epochs", "1",
                     "--quiet", "--manifest", path)
    assert rc == 0, err
    return path


NOTEBOOK_EDITS = {
    "epochs": (lambda m: m["config"].update(epochs="1"), "config.epochs: expected an integer, got '1'"),
    "lr": (lambda m: m["config"].update(lr="0.1"), "config.lr: expected a number, got '0.1'"),
    "hidden": (lambda m: m["config"].update(hidden="16"), "config: hidden: expected a list, got '16'"),
    "replay": (lambda m: m["config"].update(replay_step="no"), "config.replay_step: expected true or false"),
    "missing": (lambda m: m["config"].pop("batch_size"), "config: the field 'batch_size' is missing"),
    "unknown": (lambda m: m["config"].update(optimizer="adam"), "config: unknown field 'optimizer'"),
    "group": (lambda m: m.update(group=[0.5]), "group: expected a list holding config.lr (0.1)"),
    "group text": (lambda m: m.update(group=["0.1"]), "group: expected a list of positive learning rates"),
    "seed": (lambda m: m.update(seed=0), "seed: 0 disagrees with config.seed 42"),
    "train-only field": (lambda m: m.update(devices=1), "the manifest: unknown field 'devices'"),
}


@pytest.mark.parametrize("name", NOTEBOOK_EDITS)
def test_an_edited_notebook_manifest_is_one_valueerror(name, notebook_manifest, data_dir, tmp_path):
    """A notebook manifest's fields are type-checked as a train manifest's are: one line naming the file and
    the field, never a traceback."""
    edit, says = NOTEBOOK_EDITS[name]
    path = edited(notebook_manifest, tmp_path, edit)
    assert says in refused(path, data_dir)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ")):
        manifest.read_manifest(path)


UNREADABLE = {  # name: (bytes of the file, or None for a folder; what the refusal says)
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not UTF-8 text: byte 0x89 at offset 0"),
    "latin-1": ('{"kind": "tr\xe9in"}'.encode("latin-1"), "not UTF-8 text: byte 0xe9"),
    "truncated": (b'{"manifest_version": 1, "kind": "tr', "not JSON (Unterminated string"),
    "empty": (b"", "not JSON (Expecting value at line 1)"),
    "nested": (b"[" * 100_000 + b"]" * 100_000, "not a jaxmlp manifest"),
    "repeated key": (b'{"manifest_version": 1, "seed": 42, "seed": 7}', "the field 'seed' appears twice"),
    "a list": (b"[1, 2]", "not a jaxmlp manifest (expected a JSON object)"),
    "oversized": (b"{" + b" " * 300 + b"}", "not a jaxmlp manifest (more than 256 bytes)"),
    "a folder": (None, "cannot be read (Is a directory)"),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_every_read_error_names_the_file(name, tmp_path, data_dir, monkeypatch):
    """Binary, non-UTF-8, truncated, empty, deeply nested, oversized and repeated-key files and a folder:
    `jaxmlp verify` exits 1 with one line that names the file."""
    content, says = UNREADABLE[name]
    monkeypatch.setattr(manifest_schema, "MAX_MANIFEST_BYTES", 256)
    path = tmp_path / "m.json"
    path.mkdir() if content is None else path.write_bytes(content)
    assert says in refused(path, data_dir)


def test_a_missing_manifest_is_one_line(tmp_path, data_dir):
    assert "cannot be read (No such file or directory)" in refused(tmp_path / "absent.json", data_dir)


ODD_VALUES = ("1", None, True, [], {}, -1, 1.5, "x" * 70)


def _leaves(tree, where=()):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from _leaves(v, (*where, k))
    elif isinstance(tree, list) and tree:
        for i, v in enumerate(tree):
            yield from _leaves(v, (*where, i))
    yield where


def test_read_manifest_lets_only_valueerror_out(trained, notebook_manifest, tmp_path):
    """Every field (and every object and list) of a real train and notebook manifest replaced by each of
    several values of other types: ``read_manifest`` accepts it or raises a ValueError naming the file,
    nothing else."""
    path = tmp_path / "m.json"
    for source in (trained, notebook_manifest):
        original = json.loads(source.read_text())
        for where in _leaves(original):
            for value in ODD_VALUES:
                m = json.loads(source.read_text())
                if not where:
                    m = value
                else:
                    parent = m
                    for k in where[:-1]:
                        parent = parent[k]
                    parent[where[-1]] = value
                path.write_text(json.dumps(m))
                try:
                    manifest.read_manifest(path)
                except ValueError as err:
                    assert str(err).startswith(f"{path}: ") and "\n" not in str(err), (where, value, err)


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


def test_a_finetune_sources_best_params_are_an_input_too(tmp_path, data_dir):
    """Fine-tuning from an early-stopped checkpoint reads the best params it names beside itself: both files
    are recorded, and a change to the best params alone is refused naming that file."""
    src = tmp_path / "es.npz"
    rc, _, err = run("train", "--data-dir", data_dir, *EARLY, "--quiet", "--save", src)
    assert rc == 0 and (tmp_path / "es.best.npz").is_file(), err
    path = tmp_path / "ft.json"
    rc, _, err = run("train", "--data-dir", data_dir, "--finetune", src, "--epochs", "1", "--quiet", "--manifest", path)
    assert rc == 0, err
    best = (tmp_path / "es.best.npz").resolve()
    assert [e["path"] for e in json.loads(path.read_text())["inputs"]] == [str(src.resolve()), str(best)]
    rc, out, err = run("verify", path, "--data-dir", data_dir, "--quiet")
    assert rc == 0 and "bit-identical" in out, err + out
    with open(best, "ab") as f:
        f.write(b"\0")
    assert f"fine-tune source {best}: sha256 differs from the manifest's" in refused(path, data_dir)
