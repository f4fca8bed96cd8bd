"""Sweeps and ensembles: configuration building, shape grouping, vmapped members vs single runs,
the averaged-probability ensemble, the CLI's table and JSON."""
from __future__ import annotations

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from jaxmlp import bench, cli, engine, groups, members, runs, sweep
from jaxmlp.config import TrainConfig
from jaxmlp.data import Dataset, write_idx
from jaxmlp.models import MLP


def tiny_dataset(n_train=250, n_test=60, seed=0) -> Dataset:
    """Random 28x28 uint8 digits with labels that depend on the pixels, so training moves the loss.
    250 is not a multiple of the batch size 32 used below: the short last batch is exercised too."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = (x[:, 10:18, 10:18].mean(axis=(1, 2)) // 26).clip(0, 9).astype(np.uint8)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


BASE = TrainConfig(hidden=(8,), epochs=2, batch_size=32, dtype="float64")
# Compiling dominates these tests' time, so they share shapes: every group below has 4 members with a
# shared shuffle (one seed) or 8 members with per-member shuffles, and all reuse BASE's shapes.
SEEDS_PER_MEMBER = [5, 6]


@pytest.fixture(scope="module")
def data():
    return tiny_dataset()


# ---------------------------------------------------------------- building configurations


def test_grid_is_the_cartesian_product_lr_fastest():
    """grid() yields every combination once, with lr varying fastest and other fields from the base."""
    configs = sweep.grid(BASE, lr=[0.1, 0.01], hidden=[(8,), (4, 4)], seed=[1, 2])
    assert len(configs) == 8
    assert [(c.hidden, c.seed, c.lr) for c in configs[:3]] == [((8,), 1, 0.1), ((8,), 1, 0.01), ((8,), 2, 0.1)]
    assert {(c.hidden, c.seed, c.lr) for c in configs} == {
        (h, s, lr) for h in [(8,), (4, 4)] for s in [1, 2] for lr in [0.1, 0.01]}
    assert all(c.epochs == 2 and c.dtype == "float64" for c in configs)


def test_grid_rejects_unknown_axes_and_empty_lists():
    """Sweeping a non-sweepable field or giving no values is a ValueError naming it."""
    with pytest.raises(ValueError, match="dropout"):
        sweep.grid(BASE, dropout=[0.1])
    with pytest.raises(ValueError, match="--lr"):
        sweep.grid(BASE, lr=[])


def test_random_search_is_reproducible_and_stays_in_range():
    """Random draws repeat for the same seed, lrs lie in the log range, choices come from the lists."""
    a = sweep.random_search(BASE, 20, seed=3, lr_range=(1e-3, 1e-1), batch_size=[16, 32], init=["he", "glorot"])
    b = sweep.random_search(BASE, 20, seed=3, lr_range=(1e-3, 1e-1), batch_size=[16, 32], init=["he", "glorot"])
    assert a == b
    lrs = np.array([c.lr for c in a])
    assert np.all((lrs >= 1e-3) & (lrs <= 1e-1))
    assert lrs.min() < 1e-2 < lrs.max()  # log-uniform: both decades are visited in 20 draws
    assert {c.batch_size for c in a} <= {16, 32} and {c.init for c in a} <= {"he", "glorot"}


def test_group_by_shape_batches_lr_seed_init_but_not_shapes():
    """lr, seed and init share a program; hidden sizes and batch sizes split groups; max_group caps size."""
    configs = sweep.grid(BASE, lr=[0.1, 0.01], seed=[1, 2], init=["notebook", "he"], hidden=[(8,), (4,)],
                         batch_size=[32, 64])
    groups = sweep.group_by_shape(configs, 250)
    assert len(groups) == 4 and all(len(g) == 8 for g in groups)
    for g in groups:
        assert len({(configs[i].hidden, configs[i].batch_size) for i in g}) == 1
    assert sorted(i for g in groups for i in g) == list(range(len(configs)))
    capped = sweep.group_by_shape(configs, 250, max_group=3)
    assert [len(g) for g in capped] == [3, 3, 2] * 4


# ---------------------------------------------------------------- vmapped members == single runs


@pytest.mark.parametrize("seeds, optimizer", [([5], "sgd"), (SEEDS_PER_MEMBER, "sgd"), ([5], "momentum")],
                         ids=["shared-key-sgd", "per-member-keys", "shared-key-momentum"])
def test_sweep_members_equal_single_runs(data, seeds, optimizer):
    """Each member of a group reproduces runs.fit of its own config: the same epoch losses, test loss
    and accuracy, with one run key for all members (an lr sweep: the key unbatched, one shuffle) and
    with per-member keys (batched), for SGD and for momentum (optimizer state under vmap too)."""
    momentum = {"momentum": 0.8} if optimizer == "momentum" else {}  # a config refuses settings it would ignore
    base = dataclasses.replace(BASE, optimizer=optimizer, weight_decay=1e-3, l2=2e-3, **momentum)
    configs = sweep.grid(base, lr=[0.2, 0.05], seed=seeds, init=["notebook", "he"])
    result = sweep.run_sweep(configs, data)
    assert len(result.groups) == 1 and result.groups[0].shared_key == (len(seeds) == 1)
    for config, run in zip(configs, result.runs):
        single = runs.fit(config, data, chunk_steps=3, divergence=False)  # chunks of 3, 3, 2 steps
        # float64 throughout; vmap only reorders sums inside batched matmuls, so agreement is to ~1e-15
        # relative per step, amplified over 16 SGD steps: 1e-10 leaves ample margin and still fails on
        # any real difference (a wrong key, lr or init changes the loss in the 3rd-4th digit).
        np.testing.assert_allclose(run.history, [h["loss"] for h in single.history], rtol=1e-10)
        np.testing.assert_allclose(run.test_loss, single.test_loss, rtol=1e-10)
        assert run.test_accuracy == pytest.approx(single.test_accuracy, abs=1e-12)
    assert len({round(r.history[-1], 8) for r in result.runs}) == len(configs)  # members really differ


def test_shared_order_members_differ_only_in_their_params(data):
    """share_order: members of different seeds train on the first member's minibatches. Each equals
    runs.fit of its own config resumed from its own initial params with the first member's run key,
    and (for the second seed) not its own single run: the order really is the first seed's."""
    configs = sweep.grid(BASE, lr=[0.2, 0.05], seed=SEEDS_PER_MEMBER)  # (He init: lr 0.5 blows up here)
    result = sweep.run_sweep(configs, data, share_order=True)
    assert len(result.groups) == 1 and result.groups[0].shared_key
    spec = runs.spec_for(BASE, len(data.y_train))
    with engine.precision("float64"):
        first_key = members.member_state(configs[0], 784, 10, spec)[0].key
        starts = [members.member_state(c, 784, 10, spec)[0]._replace(key=first_key) for c in configs]
    for config, run, start in zip(configs, result.runs, starts):
        expected = runs.fit(config, data, resume=start, divergence=False)
        np.testing.assert_allclose(run.history, [h["loss"] for h in expected.history], rtol=1e-10)
        np.testing.assert_allclose(run.test_loss, expected.test_loss, rtol=1e-10)
    own = runs.fit(configs[2], data, divergence=False)  # seed 6, lr 0.2, its own shuffle
    assert abs(own.history[-1]["loss"] - result.runs[2].history[-1]) > 1e-6


def _stacked_one_by_one(configs, spec, shared):
    """The group's state and hparams member by member (``member_state``) and stacked: the reference."""
    states, hps = zip(*(members.member_state(c, 784, 10, spec) for c in configs))
    key = states[0].key if shared else jax.numpy.stack([s.key for s in states])
    state = engine.TrainState(members.stack([s.params for s in states]), members.stack([s.opt_state for s in states]),
                              key, states[0].epoch, states[0].step)
    return state, members.stack(hps)


def assert_same_bits(got, want):
    got_leaves, got_tree = jax.tree_util.tree_flatten(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert got_tree == want_tree
    for a, b in zip(got_leaves, want_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype, optimizer", [("float64", "momentum"),
                                              pytest.param("float32", "adamw", marks=pytest.mark.slow)])
def test_members_are_built_at_once_exactly_as_one_by_one(dtype, optimizer):
    """init_members builds every member in one vmapped program, bit for bit what member_state builds
    for each (params of mixed init schemes, optimizer state, run keys, hparams; a seed past 2**31,
    the largest allowed, too), with one compiled program and none for a second group of the same shapes."""
    base = dataclasses.replace(BASE, dtype=dtype, optimizer=optimizer, weight_decay=None)
    configs = sweep.grid(base, lr=[0.5, 0.05], seed=[5, 2**32 - 2], init=["he", "notebook", "glorot"])
    spec = runs.spec_for(base, 250)
    with engine.precision(dtype):
        for shared in (False, True):
            with bench.CompileCounter() as built:
                got = members.init_members(configs, 784, 10, spec, shared)
            assert built.count <= 1
            assert_same_bits(got, _stacked_one_by_one(configs, spec, shared))
        others = [dataclasses.replace(c, lr=c.lr * 3, seed=c.seed + 1) for c in configs]
        with bench.CompileCounter() as built:
            members.init_members(others, 784, 10, spec, True)
        assert built.count == 0


@pytest.mark.slow  # eager CNN init ops, compiled one by one for both paths
def test_cnn_members_are_built_exactly_as_one_by_one():
    """The CNN's members (built op by op, as a single CNN run builds its params) equal member_state's."""
    base = dataclasses.replace(BASE, arch="cnn", hidden=TrainConfig().hidden, dtype="float32", optimizer="momentum")
    configs = sweep.grid(base, lr=[0.5, 0.05], seed=[5, 6])
    spec = runs.spec_for(base, 250)
    assert_same_bits(members.init_members(configs, 784, 10, spec), _stacked_one_by_one(configs, spec, False))


def test_group_program_keeps_the_short_batch_branch(data, x64):
    """vmap of the engine's chunk with the step counters unbatched keeps the short last batch a
    ``cond`` (a batched predicate would turn it into a select that runs both branches every step)."""
    configs = sweep.grid(BASE, lr=[0.1, 0.2])
    x = runs.prepare(data.x_train, np.float64)
    y = jax.numpy.asarray(data.y_train, jax.numpy.int32)
    spec = runs.spec_for(configs[0], x.shape[0])
    for shared in (True, False):
        state, hp = members.init_members(configs, 784, 10, spec, shared)
        order = members.group_order(state.key, state.epoch, x.shape[0], shared)
        jaxpr = jax.make_jaxpr(functools.partial(members.group_chunk, spec=spec, capacity=8, shared_key=shared))(
            state, order, x, y, hp, jax.numpy.int32(8))
        assert " cond[" in str(jaxpr)
        assert state.epoch.shape == () and state.key.shape == ((2,) if shared else (2, 2))


def test_second_group_call_does_not_recompile(data, x64):
    """Training the same shapes again (another lr, another seed) reuses the compiled group program."""
    configs = sweep.grid(BASE, lr=[0.1, 0.2, 0.3, 0.4])
    x = runs.prepare(data.x_train, np.float64)
    y = jax.numpy.asarray(data.y_train, jax.numpy.int32)
    groups.train_group(configs, x, y)
    with bench.CompileCounter() as built:
        groups.train_group([dataclasses.replace(c, lr=c.lr * 3, seed=9) for c in configs], x, y)
    assert built.count == 0


# ---------------------------------------------------------------- ensembles


def test_ensemble_accuracy_averages_probabilities_not_votes():
    """The ensemble predicts argmax of the mean probabilities: two members narrowly prefer class 0,
    one strongly prefers class 1, so the average picks 1 where a majority vote would pick 0."""
    probs = np.array([[[0.55, 0.45], [0.9, 0.1]],
                      [[0.55, 0.45], [0.8, 0.2]],
                      [[0.01, 0.99], [0.3, 0.7]]])   # (K=3, N=2, C=2)
    labels = np.array([1, 0])
    # mean probs: example 0 -> [0.37, 0.63] (class 1, right), example 1 -> [0.667, 0.333] (class 0, right)
    assert members.ensemble_accuracy(probs, labels) == 1.0
    votes = np.array([np.bincount(np.argmax(probs[:, i], -1), minlength=2).argmax() for i in range(2)])
    assert np.mean(votes == labels) == 0.5
    with pytest.raises(ValueError):
        members.ensemble_accuracy(probs[0], labels)


def test_fit_ensemble_members_and_ensemble_metrics(data, x64):
    """fit_ensemble trains seeds seed..seed+K-1; each member equals its single run, and the reported
    ensemble accuracy equals the averaged-probability accuracy computed from the members' probs."""
    config = dataclasses.replace(BASE, seed=11, lr=0.3)
    res = sweep.fit_ensemble(config, data, 8)
    assert [m.config.seed for m in res.members] == list(range(11, 19))
    single = runs.fit(dataclasses.replace(config, seed=12), data)
    np.testing.assert_allclose(res.members[1].test_loss, single.test_loss, rtol=1e-10)
    x_test = runs.prepare(data.x_test, np.float64)
    probs = members.ensemble_probs(MLP(), res.params, x_test)
    assert probs.shape == (8, len(data.y_test), 10)
    assert res.ensemble_accuracy == pytest.approx(members.ensemble_accuracy(probs, data.y_test), abs=1e-12)
    mean_p = np.asarray(probs).mean(0)[np.arange(len(data.y_test)), data.y_test]
    assert res.ensemble_loss == pytest.approx(-np.mean(np.log(mean_p)), rel=1e-10)


# ---------------------------------------------------------------- reporting and the CLI


def test_run_record_turns_nan_into_null():
    """A diverged run's NaN losses become JSON nulls, and it sorts after every finite run."""
    bad = sweep.RunResult(BASE, [2.3, float("nan")], float("nan"), 0.1, True, 0)
    good = sweep.RunResult(BASE, [2.3, 1.0], 1.1, 0.05, False, 0)
    rec = sweep.run_record(bad)
    assert rec["history"] == [2.3, None] and rec["test_loss"] is None and rec["diverged"] is True
    json.dumps(rec, allow_nan=False)
    assert sweep.sorted_runs([bad, good]) == [good, bad]


def write_dataset_dir(folder, data: Dataset):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train-images-idx3-ubyte", data.x_train), ("train-labels-idx1-ubyte", data.y_train),
                      ("t10k-images-idx3-ubyte", data.x_test), ("t10k-labels-idx1-ubyte", data.y_test)):
        write_idx(folder / name, arr)
    return folder


def test_cli_sweep_table_and_json(tmp_path, data, capsys):
    """`jaxmlp sweep` prints a table sorted by test accuracy and writes runs (config + test_accuracy,
    best first, one per configuration) and one entry per compiled program (one here: same shapes);
    --plot-dir draws accuracy against the swept values."""
    folder = write_dataset_dir(tmp_path / "mnist", data)
    out = tmp_path / "sweep.json"
    rc = cli.main(["sweep", "--data-dir", str(folder), "--lr", "0.2", "0.05", "--hidden", "8", "--seed", "5", "6",
                   "--init", "notebook", "he", "--batch-size", "32", "--epochs", "2", "--dtype", "float64",
                   "--metrics-out", str(out), "--plot-dir", str(tmp_path / "plots")])
    assert rc == 0
    assert (tmp_path / "plots" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    captured = capsys.readouterr()
    text = captured.out  # the table on stdout, progress on stderr
    assert "8 configurations, 1 compiled program(s)" in captured.err and "test acc" in text
    table = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and "%" in line]
    assert [int(row[0]) for row in table] == list(range(1, 9))
    table_accs = [float(row[-1].rstrip("%")) for row in table]
    assert table_accs == sorted(table_accs, reverse=True)
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 8 and len(report["groups"]) == 1 and report["groups"][0]["members"] == 8
    accs = [r["test_accuracy"] for r in report["runs"]]
    assert accs == sorted(accs, reverse=True)
    assert {(r["config"]["lr"], r["config"]["seed"], r["config"]["init"]) for r in report["runs"]} == {
        (lr, s, i) for lr in (0.2, 0.05) for s in (5, 6) for i in ("notebook", "he")}
    assert report["devices"] == 1


def test_cli_sweep_bad_hidden_is_one_line_error(capsys):
    """A malformed --hidden value is one line on stderr and exit status 1."""
    assert cli.main(["sweep", "--hidden", "128,x"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hidden" in err[0]


def test_cli_train_ensemble(tmp_path, data, capsys):
    """`jaxmlp train --ensemble 8` reports each member and the ensemble, and writes them to JSON;
    flags it cannot honour (--save-every, --classes) are refused."""
    folder = write_dataset_dir(tmp_path / "mnist", data)
    out = tmp_path / "ens.json"
    rc = cli.main(["train", "--data-dir", str(folder), "--ensemble", "8", "--hidden", "8", "--epochs", "2",
                   "--batch-size", "32", "--dtype", "float64", "--quiet", "--metrics-out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "member seed 42" in text and "member seed 49" in text and "Ensemble of 8" in text
    report = json.loads(out.read_text())
    assert report["ensemble"] == 8 and len(report["members"]) == 8
    assert 0 <= report["test_accuracy"] <= 1  # the ensemble's
    assert cli.main(["train", "--data-dir", str(folder), "--ensemble", "2", "--save", str(tmp_path / "c.npz"),
                     "--save-every", "5"]) == 1
    assert "--ensemble cannot be combined with --save-every" in capsys.readouterr().err
    # fine-tuning flags are not honoured by the vmapped ensemble: refused, not silently ignored
    assert cli.main(["train", "--data-dir", str(folder), "--ensemble", "2", "--classes", "1", "2"]) == 1
    assert "--ensemble cannot be combined with --classes" in capsys.readouterr().err


@pytest.mark.parametrize("shared", [True, False], ids=["shared-key", "per-member-keys"])
def test_chains_split_members_without_changing_them(data, x64, shared):
    """group_chunk with the members cut into 3 uneven independent chains (2 + 2 + 1) returns what one
    chain returns: params, optimizer state, keys, step counters and losses, member for member."""
    configs = [dataclasses.replace(BASE, lr=lr, optimizer="momentum", seed=1 if shared else i)
               for i, lr in enumerate([0.5, 0.2, 0.1, 0.05, 0.01])]
    x = runs.prepare(data.x_train, np.float64)
    y = jax.numpy.asarray(data.y_train, jax.numpy.int32)
    spec = runs.spec_for(configs[0], x.shape[0])
    state, hp = members.init_members(configs, 784, 10, spec, shared)
    order = members.group_order(state.key, state.epoch, x.shape[0], shared)
    run = functools.partial(members.run_group_chunk, state, order, x, y, hp, jax.numpy.int32(5), spec=spec,
                            capacity=8, shared_key=shared)
    one, three = run(chains=1), run(chains=3)
    assert int(three[0].step) == 5 and three[0].epoch.shape == ()
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(three)):
        # Each member's arithmetic is identical; only XLA's scheduling differs, so allow round-off.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
    assert members.default_chains(1) == 1 and 1 <= members.default_chains(16) <= 16


def test_cli_sweep_too_many_devices_is_one_line_error(capsys):
    """`jaxmlp sweep --devices N` beyond what exists fails before any data is read, in one line naming
    --devices."""
    rc = cli.main(["sweep", "--devices", str(jax.device_count() + 3), "--data-dir", "/nonexistent"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices" in err[0]
