"""A model is one value: what ``jaxmlp train`` reports is what every consumer of its model reports.

For every architecture, activation and dtype the command line accepts, one run trains with ``--save``
and then ``eval --load``, ``predict --load``, the ``--plot-dir`` confusion matrix's predictions, the
same configuration through ``jaxmlp sweep`` and the same seed as a member of ``--ensemble`` must
report the test accuracy training reported. (A tanh model was once scored as ReLU: 89.81% trained,
84.32% evaluated.) The quick selection runs one non-ReLU cell; the rest are marked slow.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import run, write_dataset

import jaxmlp.plots
from jaxmlp.data import read_idx
from jaxmlp.models import MLP, from_config
from jaxmlp.runs import load_model

# Every activation in float32, and every dtype with ReLU and with tanh (the activation once scored as
# ReLU): the model's identity and its dtype are saved and read by separate code, so a fault in either
# shows in these cells. The CNN's cells: tests/test_roundtrip_cnn.py.
CELLS = [*(("mlp", act, "float32") for act in ("relu", "tanh", "sigmoid", "gelu")),
         *(("mlp", act, dtype) for act in ("relu", "tanh") for dtype in ("float64", "bfloat16"))]
QUICK = {("mlp", "tanh", "float32")}


def _cell_flags(arch: str, activation: str | None, dtype: str) -> list[str]:
    model = ["--arch", arch] + (["--hidden", "16", "--activation", activation] if arch == "mlp" else [])
    return [*model, "--dtype", dtype, "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--seed", "1",
            "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_train=128, n_test=96)


def _accuracy(path) -> float:
    return json.loads(path.read_text())["test_accuracy"]


@pytest.mark.parametrize("cell", [pytest.param(c, marks=() if c in QUICK else pytest.mark.slow,
                                               id="-".join(x for x in c if x)) for c in CELLS])
def test_every_consumer_scores_what_training_reported(cell, tmp_path, data_dir, monkeypatch):
    round_trip(cell, tmp_path, data_dir, monkeypatch)


def round_trip(cell, tmp_path, data_dir, monkeypatch) -> None:
    """Train one cell with --save and check every consumer against the accuracy training reported."""
    flags = _cell_flags(*cell)
    seen: dict = {}
    monkeypatch.setattr(jaxmlp.plots, "save_training_plots", lambda *a, **k: seen.update(k) or [])
    rc, _, err = run("train", "--data-dir", data_dir, *flags, "--save", tmp_path / "ck.npz",
                     "--metrics-out", tmp_path / "train.json", "--plot-dir", tmp_path / "plots")
    assert rc == 0, err
    trained = _accuracy(tmp_path / "train.json")
    y_test = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")

    loaded = load_model(tmp_path / "ck.npz")  # the checkpoint stores the model that was trained
    assert loaded.model == from_config(loaded.config)
    assert (loaded.model.name, getattr(loaded.model, "activation", None)) == (cell[0], cell[1])

    rc, _, err = run("eval", "--load", tmp_path / "ck.npz", "--data-dir", data_dir, "--metrics-out",
                     tmp_path / "eval.json")
    assert rc == 0, err
    assert _accuracy(tmp_path / "eval.json") == trained

    rc, out, err = run("predict", data_dir / "t10k-images-idx3-ubyte.gz", "--load", tmp_path / "ck.npz",
                       "--format", "json")
    assert rc == 0, err
    labels = np.array([json.loads(line)["label"] for line in out.splitlines()])
    assert np.mean(labels == y_test) == pytest.approx(trained, abs=1e-12)
    assert np.mean(np.asarray(seen["preds"]) == y_test) == pytest.approx(trained, abs=1e-12)

    sweep_flags = [f for f in flags if f != "--quiet"]
    rc, _, err = run("sweep", "--data-dir", data_dir, *sweep_flags, "--quiet", "--metrics-out", tmp_path / "s.json")
    assert rc == 0, err
    [member] = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert member["test_accuracy"] == pytest.approx(trained, abs=1e-12)

    rc, _, err = run("train", "--data-dir", data_dir, *flags, "--ensemble", "2", "--metrics-out", tmp_path / "e.json")
    assert rc == 0, err
    first = json.loads((tmp_path / "e.json").read_text())["members"][0]
    assert first["config"]["seed"] == 1 and first["test_accuracy"] == pytest.approx(trained, abs=1e-12)


def test_evaluate_takes_any_apply_function_and_names_a_swapped_call():
    """``evaluate`` scores a user's own ``apply(params, x)`` through the same code as a model value, and a
    call in the old order (params first) is one TypeError that shows the new one."""
    import jax

    model = MLP(hidden=(8,), activation="tanh")
    params = model.init(jax.random.PRNGKey(0), 12, 3)
    x = jax.random.uniform(jax.random.PRNGKey(1), (20, 12))
    y = np.arange(20) % 3
    by_value = jaxmlp.evaluate(model, params, x, y)
    by_function = jaxmlp.evaluate(lambda p, xs: model.apply(p, xs), params, x, y)
    assert by_value == by_function
    assert by_value != jaxmlp.evaluate(MLP(hidden=(8,)), params, x, y)  # ReLU scores other logits
    with pytest.raises(TypeError, match=r"evaluate\(model, params, x, \.\.\.\): the model comes first"):
        jaxmlp.evaluate(params, x, y)
