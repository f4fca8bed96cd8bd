"""``jaxmlp reproduce``: the grouped notebook runs equal the single ones, the tables are well formed, and
the framework (progress, Markdown, JSON, manifests, --rows, resuming) works on a tiny fake table; max-norm
bounds every unit's incoming weights after training."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from conftest import make_synthetic_dataset

from jaxmlp import reproduce
from jaxmlp.cli import main
from jaxmlp.config import TrainConfig
from jaxmlp.data import write_idx
from jaxmlp.notebook import fit_notebook
from jaxmlp.reproduce import NotebookRecipe, Row, Table, fit_notebook_group, plan, report, runner


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small():
    return make_synthetic_dataset(n_train=200, n_test=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, small) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for prefix, images, labels in (("train", small.x_train, small.y_train), ("t10k", small.x_test, small.y_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


# ---------------------------------------------------------------- the notebook's runs, grouped


def test_one_lr_is_fit_notebook_bit_for_bit(small):
    """A group of one runs fit_notebook's own program: the same params bits, history and test numbers."""
    kw = dict(batch_size=32, epochs=2, hidden=(16,))  # 200 = 6 * 32 + 8: the short last batch too
    single = fit_notebook(small, lr=0.1, **kw)
    (grouped,) = fit_notebook_group(small, [0.1], **kw)
    for a, b in zip(single.params, grouped.params):
        np.testing.assert_array_equal(np.asarray(a["W"]), np.asarray(b["W"]))
    assert grouped.history == single.history
    assert (grouped.test_loss, grouped.test_accuracy) == (single.test_loss, single.test_accuracy)


def test_a_group_equals_its_single_runs(small):
    """Three lrs trained together: each member is its own run to float64 rounding, with the same accuracy."""
    kw = dict(batch_size=32, epochs=2, hidden=(16, 8))
    lrs = [0.1, 0.01, 0.5]
    seen = []
    group = fit_notebook_group(small, lrs, **kw, on_epoch=lambda e, params, records: seen.append((e, len(params))))
    assert seen == [(1, 3), (2, 3)]
    for lr, member in zip(lrs, group):
        single = fit_notebook(small, lr=lr, **kw)
        for a, b in zip(single.params, member.params):
            np.testing.assert_allclose(np.asarray(b["W"]), np.asarray(a["W"]), rtol=1e-10, atol=1e-13)
        assert member.test_accuracy == single.test_accuracy
        assert [h["loss"] for h in member.history] == pytest.approx([h["loss"] for h in single.history], rel=1e-10)


def test_the_group_program_keeps_the_plain_vmaps_bits(small):
    """_group_batches keeps the first layer's members on a middle axis inside its scan: the same bits as the
    plain vmap of notebook._full_batches over members-first params (its reference), losses included."""
    import jax
    import jax.numpy as jnp

    from jaxmlp._compat import enable_x64
    from jaxmlp.model import init_params_numpy
    from jaxmlp.notebook import _full_batches, _group_batches

    with enable_x64(True):
        x = jnp.asarray(np.asarray(small.x_train, np.float64).reshape(200, -1) / 255.0)
        y = jnp.asarray(small.y_train.astype(np.int32))
        one = init_params_numpy(np.random.RandomState(3), [x.shape[1], 16, 8, 10])
        params = jax.tree_util.tree_map(lambda p: jnp.stack([p, p * 0.5, p]), one)
        idx = jnp.asarray(np.random.RandomState(4).permutation(192).reshape(6, 32))
        lrs = jnp.asarray([0.1, 0.01, 0.5])
        plain = jax.jit(jax.vmap(_full_batches, in_axes=(0, None, None, None, 0)))(params, x, y, idx, lrs)
        ours = _group_batches(params, x, y, idx, lrs)
        assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(plain)
        for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(ours)):
            assert a.shape == b.shape and a.dtype == b.dtype == jnp.float64
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- the tables


def test_the_tables_are_well_formed():
    """Unique row ids; the seed table holds the notebook's five accuracies in three training units; every
    paper row is a valid config expected within 20 minutes on a 2-core CPU and states its differences."""
    assert set(reproduce.TABLES) == {"seed", "lecun1998", "simard2003", "dropout2014"}
    for table in reproduce.TABLES.values():
        ids = [r.id for r in table.rows]
        assert len(ids) == len(set(ids)), table.name
    seed = reproduce.TABLES["seed"]
    assert sorted(r.paper for r in seed.rows) == [11.35, 75.48, 93.83, 94.82, 97.09]
    assert [[r.id for r in unit] for unit in plan.units(seed.rows)] == [
        ["lr0.01", "lr0.1", "lr0.001"], ["256-128"], ["batch128"]]
    for name in ("lecun1998", "simard2003", "dropout2014"):
        for row in reproduce.TABLES[name].rows:
            assert isinstance(row.recipe, TrainConfig) and row.recipe.dataset == "mnist"
            assert 0 < row.minutes <= 20 and row.notes, (name, row.id)
    assert reproduce.TABLES["simard2003"].rows[2].recipe.augment == "elastic"
    assert reproduce.TABLES["dropout2014"].rows[1].recipe.max_norm is not None


def test_list_shows_tables_rows_and_times():
    rc, out, _ = run("reproduce", "--list")
    assert rc == 0
    for name in ("seed", "lecun1998", "simard2003", "dropout2014", "800-elastic", "dropout-maxnorm"):
        assert name in out
    assert "an estimate" in out and "min" in out
    rc, out, _ = run("reproduce", "simard2003", "--list")
    assert rc == 0 and "lecun1998" not in out and "--augment elastic" in out


@pytest.fixture
def fake_table(monkeypatch):
    """A tiny table: two notebook rows of one shape (trained together) and one engine row."""
    table = Table("fake", "a tiny table", "tests", "error", (
        Row("a", "notebook lr 0.1", 50.0, NotebookRecipe(0.1, hidden=(8,), epochs=2), 0.1),
        Row("b", "notebook lr 0.05", 50.0, NotebookRecipe(0.05, hidden=(8,), epochs=2), 0.1),
        Row("c", "engine", 0.01, TrainConfig(hidden=(8,), init="he", epochs=1, batch_size=50), 0.1, "a note"),
    ))
    monkeypatch.setitem(reproduce.TABLES, "fake", table)
    return table


def test_a_table_runs_writes_and_resumes(fake_table, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rc, stdout, err = run("reproduce", "fake", "--out", out, "--data-dir", data_dir)
    assert rc == 0, err
    assert "| row | paper error | jaxmlp error |" in stdout and "| engine | 0.01% |" in stdout
    assert "| **no** |" in stdout and "a note" in stdout  # 0.01% is out of reach: said so
    assert "[1-2/3] fake a, b: training together" in err and "[3/3] c: error" in err and "epoch 2/2" in err
    saved = json.loads((out / "fake.json").read_text())
    assert [r["id"] for r in saved["rows"]] == ["a", "b", "c"]
    assert saved["rows"][0]["trained_with"] == ["b"] and saved["rows"][2]["trained_with"] == []
    assert (out / "fake.md").read_text() == stdout
    for row in ("a", "b", "c"):
        m = json.loads((out / "manifests" / f"fake-{row}.json").read_text())
        assert m["row"] == f"fake/{row}" and m["epochs"]
    assert json.loads((out / "manifests" / "fake-b.json").read_text())["group"] == [0.1, 0.05]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(runner, "fit_notebook_group", no_training)
    monkeypatch.setattr("jaxmlp.runs.fit", no_training)
    rc, again, err = run("reproduce", "fake", "--out", out, "--data-dir", data_dir, "--rows", "c", "a")
    assert rc == 0, err
    assert "fake c: finished in" in err and "not trained again" in err
    assert again.count("| notebook lr 0.1 |") == 1 and "notebook lr 0.05" not in again


def test_a_grouped_rows_manifest_verifies(fake_table, data_dir, tmp_path):
    """A row trained in a group records the group; verify reruns the group and matches its epochs."""
    out = tmp_path / "out"
    assert run("reproduce", "fake", "--rows", "a", "b", "--out", out, "--data-dir", data_dir, "--quiet")[0] == 0
    rc, stdout, err = run("verify", out / "manifests" / "fake-b.json", "--data-dir", data_dir, "--quiet")
    assert rc == 0, err + stdout
    assert "bit-identical" in stdout


@pytest.fixture
def two_shapes_table(monkeypatch):
    """Notebook rows of three shapes (one a group of two) and an engine row: the notebook units train at the
    same time, a thread each."""
    table = Table("shapes", "units side by side", "tests", "error", (
        Row("a", "lr 0.1, 8", 50.0, NotebookRecipe(0.1, hidden=(8,), epochs=3), 0.1),
        Row("b", "lr 0.05, 8", 50.0, NotebookRecipe(0.05, hidden=(8,), epochs=3), 0.1),
        Row("c", "lr 0.1, 6-4", 50.0, NotebookRecipe(0.1, hidden=(6, 4), epochs=3), 0.3),
        Row("d", "lr 0.1, 8, batch 50", 50.0, NotebookRecipe(0.1, hidden=(8,), batch_size=50, epochs=2), 0.2),
        Row("e", "engine", 50.0, TrainConfig(hidden=(8,), epochs=1, batch_size=50), 0.1),
    ))
    monkeypatch.setitem(reproduce.TABLES, "shapes", table)
    return table


def _hashes(folder: Path, table: str, row: str) -> list:
    manifest = json.loads((folder / "manifests" / f"{table}-{row}.json").read_text())
    return [e["params_sha256"] for e in manifest["epochs"]]


def test_notebook_units_train_side_by_side_with_the_bits_of_their_runs_alone(two_shapes_table, data_dir, tmp_path,
                                                                            monkeypatch):
    """Units of different shapes in threads (the seed table's case): each row's every epoch has the params bits
    of the unit trained alone; the records say which rows trained at the same time, and the table's total is
    the batch's span, not the sum of its units' times."""
    monkeypatch.setattr(runner, "_cores", lambda: 2)  # three units on two threads: one waits for a free one
    both = tmp_path / "both"
    rc, stdout, err = run("reproduce", "shapes", "--out", both, "--data-dir", data_dir)
    assert rc == 0, err
    assert "alongside the other units (a thread per core)" in err and "[5/5] e:" in err
    saved = {r["id"]: r for r in json.loads((both / "shapes.json").read_text())["rows"]}
    assert saved["a"]["at_once"] == ["a", "b", "c", "d"] and "at_once" not in saved["e"]
    assert saved["a"]["trained_with"] == ["b"] and saved["c"]["trained_with"] == []
    assert all(saved[i]["started_after"] >= 0 for i in "abcd")
    assert "of them in units trained at the same time" in stdout
    for unit in (["a", "b"], ["c"], ["d"]):
        alone = tmp_path / f"alone-{unit[0]}"
        assert run("reproduce", "shapes", "--rows", *unit, "--out", alone, "--data-dir", data_dir, "--quiet")[0] == 0
        for row in unit:
            assert "at_once" not in json.loads((alone / "shapes.json").read_text())["rows"][0]
            assert _hashes(both, "shapes", row) == _hashes(alone, "shapes", row), row

    records = list(saved.values())
    span = max(r["started_after"] + r["seconds"] for r in records if r.get("at_once")) + saved["e"]["seconds"]
    text = reproduce.markdown_table(two_shapes_table, records)
    assert f"5 rows in {report.seconds_text(span)} of training" in text


def test_notebook_units_are_one_batch_and_engine_rows_their_own(two_shapes_table):
    """Batches: every notebook unit together (the seed table's three units), each engine row alone; a batch's
    estimate is at least its longest unit and less than its units one after the other."""
    batches = plan.batches(plan.units(list(two_shapes_table.rows)))
    assert [[[r.id for r in unit] for unit in batch] for batch in batches] == [[["a", "b"], ["c"], ["d"]], [["e"]]]
    seed = plan.batches(plan.units(list(reproduce.TABLES["seed"].rows)))
    assert len(seed) == 1 and [len(unit) for unit in seed[0]] == [3, 1, 1]
    minutes = [plan.unit_minutes(unit) for unit in seed[0]]
    assert max(minutes) <= plan.batch_minutes(seed[0]) < sum(minutes)
    assert "seed: the seed notebook's experiments" in reproduce.list_tables("seed") and " s on a 2-core" in \
        reproduce.list_tables("seed")


def test_a_failing_unit_stops_the_others_and_is_one_line(monkeypatch, data_dir, tmp_path):
    """A unit that diverges ends the batch: the other unit stops at its next epoch (it had 1000 to go), its row is
    not written as finished, no thread outlives the command, and the error is one line."""
    import threading

    table = Table("bad", "one unit diverges", "tests", "error", (
        Row("long", "many epochs", 50.0, NotebookRecipe(0.01, hidden=(8,), epochs=1000), 9.0),
        Row("boom", "lr 1e6", 50.0, NotebookRecipe(1e6, hidden=(6,), epochs=2), 0.1),
    ))
    monkeypatch.setitem(reproduce.TABLES, "bad", table)
    before = threading.active_count()
    rc, _, err = run("reproduce", "bad", "--out", tmp_path / "out", "--data-dir", data_dir)
    assert rc == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("jaxmlp: error")]
    assert len(errors) == 1 and "bad boom: the loss rose to" in errors[0], err
    epochs = [line for line in err.splitlines() if line.startswith("  long epoch")]
    assert len(epochs) < 1000
    assert not (tmp_path / "out" / "manifests" / "bad-long.json").exists()
    assert threading.active_count() == before


@pytest.mark.parametrize("argv, message", [
    (["reproduce"], "name a table"),
    (["reproduce", "nope"], "unknown table 'nope'"),
    (["reproduce", "seed", "--rows", "zzz"], "has no row 'zzz'"),
])
def test_bad_reproduce_arguments_are_one_line(argv, message):
    rc, _, err = run(*argv)
    assert rc != 0 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------- max-norm (dropout2014's rows)


def test_max_norm_bounds_every_unit_after_fit(small):
    """--max-norm C: after training every column of every W has norm <= C (to float32 rounding), and the
    bound binds (the same run without it ends with larger columns)."""
    from jaxmlp.runs import fit

    base = dict(hidden=(32,), init="he", optimizer="adam", lr=1e-2, epochs=2, batch_size=50)
    limit = 0.5
    constrained = fit(TrainConfig(**base, max_norm=limit), small)
    free = fit(TrainConfig(**base), small)
    norms = [np.linalg.norm(np.asarray(layer["W"]), axis=0) for layer in constrained.params]
    assert max(n.max() for n in norms) <= limit * (1 + 1e-6)
    assert max(np.linalg.norm(np.asarray(layer["W"]), axis=0).max() for layer in free.params) > 2 * limit
    assert all(np.isfinite(h["loss"]) for h in constrained.history)


# ---------------------------------------------------------------- input dropout (dropout2014's rows)


def test_input_dropout_drops_pixels_and_keeps_the_distortion():
    """--input-dropout p: each training batch's pixels are zeroed with probability p and the kept ones
    scaled by 1/(1-p); the distortion drawn from the same key is the one drawn without input dropout."""
    import jax

    from jaxmlp.spec import TrainSpec, _augment

    x = jax.random.uniform(jax.random.key(0), (64, 784), minval=0.5, maxval=1.0)  # no pixel is 0 before
    key = jax.random.key(3)
    shifted = _augment(TrainSpec(augment="shift"), key, x)
    both = np.asarray(_augment(TrainSpec(augment="shift", input_dropout=0.25), key, x))
    kept = both != 0
    nonzero = np.asarray(shifted) != 0
    # Dropped: about a quarter of the pixels the shift left non-zero (64 * 784 draws: 5 sigma is 0.8%).
    assert abs(1 - kept[nonzero].mean() - 0.25) < 0.01
    np.testing.assert_allclose(both[kept], np.asarray(shifted)[kept] / 0.75, rtol=1e-6)
    assert not kept[~nonzero].any()
    # Without a distortion the same rule holds on the raw pixels; rate 0 returns the batch itself.
    plain = np.asarray(_augment(TrainSpec(input_dropout=0.5), key, x))
    assert abs((plain == 0).mean() - 0.5) < 0.01
    np.testing.assert_allclose(plain[plain != 0], np.asarray(x)[plain != 0] / 0.5, rtol=1e-6)
    assert _augment(TrainSpec(), key, x) is x


def test_input_dropout_trains_and_manual_grads_follow_it(small):
    """A run with input dropout differs from the same run without, is reproducible, and the notebook's
    manual backprop sees the same dropped pixels as jax.grad (equal params to float64 rounding)."""
    from jaxmlp.runs import fit

    base = dict(hidden=(16,), activation="tanh", epochs=2, batch_size=50, lr=0.1, dtype="float64")
    auto = fit(TrainConfig(**base, input_dropout=0.3), small)
    again = fit(TrainConfig(**base, input_dropout=0.3), small)
    manual = fit(TrainConfig(**base, input_dropout=0.3, grad="manual"), small)
    without = fit(TrainConfig(**base), small)
    for a, b, m, w in zip(auto.params, again.params, manual.params, without.params):
        np.testing.assert_array_equal(np.asarray(a["W"]), np.asarray(b["W"]))
        np.testing.assert_allclose(np.asarray(m["W"]), np.asarray(a["W"]), rtol=1e-9, atol=1e-12)
        assert not np.allclose(np.asarray(a["W"]), np.asarray(w["W"]))


def test_input_dropout_is_a_flag_and_refuses_rates_outside_0_1(data_dir, tmp_path):
    rc, _, err = run("train", "--data-dir", data_dir, "--hidden", "8", "--epochs", "1", "--input-dropout", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--input-dropout" in err
    rc, out, err = run("train", "--data-dir", data_dir, "--hidden", "8", "--epochs", "1", "--input-dropout", "0.2",
                       "--metrics-out", tmp_path / "m.json", "--quiet")
    assert rc == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["config"]["input_dropout"] == 0.2


@pytest.mark.realdata
@pytest.mark.slow
def test_the_seed_table_on_mnist(mnist_dir, tmp_path):
    """`jaxmlp reproduce seed` prints the notebook's five accuracies (minutes: five float64 runs)."""
    rc, out, err = run("reproduce", "seed", "--data-dir", mnist_dir, "--out", tmp_path, "--quiet")
    assert rc == 0, err
    for value in ("93.83%", "97.09%", "11.35%", "94.82%", "75.48%"):
        assert f"| {value} | {value} | yes |" in out
