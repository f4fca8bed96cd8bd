"""Stopping and resuming sweeps. Each test goes from the producer (a stopped group, a stopped sweep and
the checkpoint it wrote, an interrupted command) to the consumer (the resumed group, sweep or command)
and compares with what an unstopped run reports, bit for bit: where a chunk ended, or a stop fell,
changes nothing. Multi-device and multi-process stops are in test_sharded.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import signal

import numpy as np
import pytest
from conftest import make_synthetic_dataset

import jaxmlp.cli.sweep as cli_sweep
from jaxmlp import cli, engine, groups, runs, sweep, sweep_checkpoint
from jaxmlp.checkpoint import CheckpointError, save_checkpoint
from jaxmlp.config import TrainConfig
from jaxmlp.data import write_idx

# 200 examples, batch 32: 7 steps an epoch, the last one short.
DATA = make_synthetic_dataset(n_train=200, n_test=100, seed=3)


def _same_bits(a, b) -> bool:
    """Two PyTrees with equal structure and bit-identical leaves (NaN where NaN)."""
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.asarray(x).dtype == np.asarray(y).dtype and
                                      np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
                                      for x, y in zip(la, lb))


def _same_runs(got: sweep.SweepResult, want: sweep.SweepResult) -> None:
    assert [r.config for r in got.runs] == [r.config for r in want.runs]
    for g, w in zip(got.runs, want.runs):
        assert np.array_equal(g.history, w.history, equal_nan=True), g.config
        assert np.array_equal([g.test_loss, g.test_accuracy], [w.test_loss, w.test_accuracy], equal_nan=True)
        assert (g.diverged, g.group) == (w.diverged, w.group)
    assert [g.members for g in got.groups] == [g.members for g in want.groups]
    assert sweep.format_table(got.runs) == sweep.format_table(want.runs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_group_stopped_between_chunks_resumes_to_the_same_bits(dtype):
    """train_group stopped mid-epoch (chunks of 3 steps, the 4th chunk: epoch 2, step 3), with a member
    that diverged in epoch 1, resumes from its GroupProgress in chunks of 2 to the params, optimizer
    state, history and verdicts of the group trained in whole epochs; ``stop`` is never asked after
    the last epoch."""
    base = TrainConfig(hidden=(8,), epochs=3, optimizer="adam", lr=0.01, dtype=dtype)
    configs = [dataclasses.replace(base, lr=lr, seed=s) for lr, s in ((0.01, 1), (0.003, 2), (50.0, 1))]
    with engine.precision(dtype, "highest"):
        x, y = runs.prepare(DATA.x_train, runs.dtype_of(base)), np.asarray(DATA.y_train, np.int32)
        want = groups.train_group(configs, x, y)
        calls = itertools.count(1)
        with pytest.raises(groups.GroupStopped) as stopped:
            groups.train_group(configs, x, y, chunk_steps=3, stop=lambda: signal.SIGINT if next(calls) == 4 else 0)
        p = stopped.value.progress
        assert stopped.value.signum == signal.SIGINT
        assert (int(p.state.epoch), int(p.state.step)) == (1, 3)
        assert p.dead.tolist() == [False, False, True] and np.isnan(p.history[:, 1:]).all()
        asked = []
        got = groups.train_group(configs, x, y, chunk_steps=2, resume=p, stop=lambda: asked.append(1) or 0)
    assert want.diverged.tolist() == [False, False, True]
    assert _same_bits((got.params, got.opt_state, got.state), (want.params, want.opt_state, want.state))
    assert np.array_equal(got.history, want.history, equal_nan=True) and got.diverged.tolist() == [False, False, True]
    assert len(asked) == 2 + 3  # epoch 2: 4 steps left, 2 chunks; epoch 3: 4 chunks, not asked after its last


def test_a_sweep_stopped_by_a_signal_resumes_from_its_checkpoint_or_its_exception(tmp_path):
    """SIGINT during the second of two groups (sent from its first epoch's callback) stops run_sweep
    with SweepInterrupted after that epoch; the checkpoint it saved and the exception's state each
    resume to the unstopped sweep's runs, digit for digit, and the previous handler is back. A stop
    in a group's last epoch falls between the groups, and resumes as well."""
    configs = sweep.grid(TrainConfig(hidden=(8,), epochs=3), lr=[0.05, 0.2], batch_size=[32, 64], seed=[1, 2])
    want = sweep.run_sweep(configs, DATA)
    before = signal.getsignal(signal.SIGINT)
    path = tmp_path / "sweep.npz"

    def on_epoch(g, epoch, losses):
        if (g, epoch) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(sweep.SweepInterrupted) as stopped:
        sweep.run_sweep(configs, DATA, save=path, on_epoch=on_epoch, chunk_steps=2)
    assert signal.getsignal(signal.SIGINT) is before
    state = stopped.value.state
    assert (stopped.value.signum, stopped.value.saved) == (signal.SIGINT, path)
    assert state.group == 1 and (int(state.progress.state.epoch), int(state.progress.state.step)) == (1, 0)
    assert np.isnan(state.results["test"][list(want.groups[1].members)]).all()  # the stopped group: no scores
    meta, saved = sweep_checkpoint.read_sweep(path)
    assert saved == configs and (meta["group"], meta["position"]) == (1, [1, 0])
    for resume in (path, stopped.value):
        _same_runs(sweep.run_sweep(configs, DATA, resume=resume), want)

    def at_the_end_of_group_0(g, epoch, losses):  # a stop after a group's last epoch is asked between groups
        if (g, epoch) == (0, 3):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(sweep.SweepInterrupted) as stopped:
        sweep.run_sweep(configs, DATA, on_epoch=at_the_end_of_group_0)
    assert (stopped.value.saved, stopped.value.state.group, stopped.value.state.progress) == (None, 1, None)
    _same_runs(sweep.run_sweep(configs, DATA, resume=stopped.value), want)


def test_a_resumed_sweep_must_be_the_saved_one(tmp_path):
    """Another configuration, max_group or training set than the checkpoint's is refused naming the
    difference; a training run's checkpoint, or a sweep checkpoint with a malformed meta, is a
    CheckpointError naming the file."""
    configs = sweep.grid(TrainConfig(hidden=(4,), epochs=1), lr=[0.05, 0.1])
    path = tmp_path / "s.npz"
    sweep.run_sweep(configs, DATA, save=path)
    other = make_synthetic_dataset(n_train=200, n_test=100, seed=4)
    for changed, kwargs, words in (
            (sweep.grid(configs[0], lr=[0.05, 0.3]), {}, "configuration 1 has lr 0.1, the given one 0.3"),
            (configs, {"max_group": 1}, "max_group None, this run has 1"),
            (configs, {"data": other}, "was saved with data")):
        with pytest.raises(ValueError, match=words):
            sweep.run_sweep(changed, kwargs.pop("data", DATA), resume=path, **kwargs)
    save_checkpoint(tmp_path / "run.npz", {"w": np.zeros(2)}, {"config": configs[0].to_dict()})
    with pytest.raises(CheckpointError, match="run.npz: not a sweep checkpoint .a training run's"):
        sweep.run_sweep(configs, DATA, resume=tmp_path / "run.npz")
    save_checkpoint(tmp_path / "bad.npz", {"w": np.zeros(2)},
                    {"kind": sweep_checkpoint.KIND, "configs": [c.to_dict() for c in configs], "group": -1,
                     "groups": [], "settings": {}})
    with pytest.raises(CheckpointError, match="bad.npz: meta 'group' must be a non-negative integer"):
        sweep_checkpoint.read_sweep(tmp_path / "bad.npz")
    good = sweep_checkpoint.read_sweep(path)[0]
    for field, value, words in (
            ("groups", [{"members": [0]}], r"meta 'groups'\[0\] must be an object of"),
            ("settings", {**good["settings"], "image_side": "28"}, "meta .settings. needs image_side .int."),
            ("settings", {**good["settings"], "share_order": 0}, "meta .settings. needs share_order .bool.")):
        save_checkpoint(tmp_path / "bad.npz", {"w": np.zeros(2)}, {**good, field: value})
        with pytest.raises(CheckpointError, match=f"bad.npz: {words}"):
            sweep.run_sweep(configs, DATA, resume=tmp_path / "bad.npz")


def test_an_ensemble_stopped_by_a_signal_resumes_to_the_same_members_and_ensemble(tmp_path):
    """fit_ensemble stopped by SIGTERM after epoch 1 of 2 (saved) resumes from its checkpoint to the
    unstopped ensemble's params, member histories and scores and ensemble scores; the checkpoint of
    the finished ensemble resumes to the same result without training, and a sweep's checkpoint is
    refused."""
    config = TrainConfig(hidden=(8,), epochs=2, lr=0.2)
    want = sweep.fit_ensemble(config, DATA, 3)
    path = tmp_path / "ensemble.npz"

    def on_epoch(epoch, losses):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(sweep.SweepInterrupted) as stopped:
        sweep.fit_ensemble(config, DATA, 3, save=path, on_epoch=on_epoch)
    assert (stopped.value.signum, int(stopped.value.state.progress.state.epoch)) == (signal.SIGTERM, 1)
    seen = []
    got = sweep.fit_ensemble(config, DATA, 3, resume=path, save=path, on_epoch=lambda e, losses: seen.append(e))
    again = sweep.fit_ensemble(config, DATA, 3, resume=path, on_epoch=lambda e, losses: seen.append(e))
    assert seen == [2]  # the resumed run trained epoch 2; the finished one nothing
    for result in (got, again):
        assert _same_bits(result.params, want.params)
        assert (result.ensemble_loss, result.ensemble_accuracy) == (want.ensemble_loss, want.ensemble_accuracy)
        assert [(m.history, m.test_loss, m.test_accuracy) for m in result.members] == [
            (m.history, m.test_loss, m.test_accuracy) for m in want.members]
    sweep.run_sweep(sweep.grid(config, seed=[42, 43, 44]), DATA, save=tmp_path / "sweep.npz")
    with pytest.raises(ValueError, match="was saved with ensemble None, this run has True"):
        sweep.fit_ensemble(config, DATA, 3, resume=tmp_path / "sweep.npz")


def _idx_folder(folder):
    for name, arr in (("train-images-idx3-ubyte", DATA.x_train), ("train-labels-idx1-ubyte", DATA.y_train),
                      ("t10k-images-idx3-ubyte", DATA.x_test), ("t10k-labels-idx1-ubyte", DATA.y_test)):
        write_idx(folder / name, arr)
    return folder


def _main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli_sweep_sigterm_then_resume_prints_the_unstopped_table(tmp_path, monkeypatch):
    """`jaxmlp sweep --save` hit by SIGTERM (sent at its second epoch) exits 143 with one line saying
    where it stopped and how to go on; `--resume PATH` alone prints the unstopped sweep's table, digit
    for digit; with flags that give another sweep it is a one-line error, nothing trained."""
    data = _idx_folder(tmp_path)
    grid = ["sweep", "--data-dir", str(data), "--lr", "0.05", "0.2", "--seed", "1", "2", "--epochs", "3", "--hidden",
            "8", "--quiet"]
    rc, want, _ = _main(grid)
    assert rc == 0 and want.splitlines()[0].split()[:3] == ["rank", "lr", "seed"]
    on_epoch = cli_sweep.SweepProgress.on_epoch

    def signalled(self, g, epoch, losses):
        on_epoch(self, g, epoch, losses)
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli_sweep.SweepProgress, "on_epoch", signalled)
    path = tmp_path / "sweep.npz"
    rc, out, err = _main([*grid, "--save", str(path), "--chunk-steps", "3"])
    assert (rc, out) == (128 + signal.SIGTERM, "")
    assert err.splitlines() == [f"jaxmlp: sweep interrupted by SIGTERM in group 1/1, after epoch 2; saved in {path} "
                                f"(continue with --resume {path})"]
    monkeypatch.setattr(cli_sweep.SweepProgress, "on_epoch", on_epoch)
    assert _main(["sweep", "--resume", str(path), "--data-dir", str(data), "--quiet"]) == (0, want, "")
    rc, out, err = _main([*grid[:4], "0.3", *grid[5:], "--resume", str(path)])
    assert (rc, out) == (1, "") and err.splitlines() == [
        f"jaxmlp: error: --resume: {path}: configuration 0 has lr 0.05, the given one 0.3; a resumed run must be "
        f"the saved one (give the saved sweep's flags, or none)"]
