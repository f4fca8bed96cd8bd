"""Tests for jaxmlp.checkpoint: bit-exact round trips, no pickle, atomic writes, clear errors."""
from __future__ import annotations

import json
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import checkpoint as ckpt
from jaxmlp.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture
def x64():
    """Float64 on for the test, restored afterwards (conftest may already enable it globally)."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


class AdamLike(NamedTuple):
    """An optimizer state with a scalar int32 step and nested PyTrees, like an Adam state."""

    step: jax.Array
    mu: list
    nu: list


def make_params(dtype, sizes=(6, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"W": jnp.asarray(rng.standard_normal((m, n)), dtype), "b": jnp.asarray(rng.standard_normal(n), dtype)}
        for m, n in zip(sizes[:-1], sizes[1:])
    ]


def make_opt_state(params):
    # Values that are not round in binary, so any float conversion would change bits.
    mu = jax.tree_util.tree_map(lambda p: p / 3.0, params)
    nu = jax.tree_util.tree_map(lambda p: p * p / 7.0, params)
    return AdamLike(step=jnp.asarray(17, jnp.int32), mu=mu, nu=nu)


def assert_tree_bit_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        assert x.shape == y.shape
        # Compare bits, not values: catches rounding that value equality at a tolerance would hide.
        assert x.tobytes() == y.tobytes()


CONFIG = {"sizes": [6, 5, 3], "lr": 0.01, "optimizer": "adam", "batch_size": 32, "seed": 0}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("key_kind", ["typed", "raw"])
def test_round_trip_is_bit_exact(tmp_path, x64, dtype, key_kind):
    """Params, a NamedTuple optimizer state (int32 step), both key kinds, epoch and config come back bit-exact."""
    params = make_params(dtype)
    opt_state = make_opt_state(params)
    key = jax.random.key(42) if key_kind == "typed" else jax.random.PRNGKey(42)
    key = jax.random.split(key)[1]  # a key with non-trivial data
    history = [{"epoch": 1, "loss": 0.5, "val_accuracy": 0.9}, {"epoch": 2, "loss": 0.25, "val_accuracy": 0.95}]
    path = tmp_path / "run.ckpt"
    out = save_checkpoint(path, params=params, opt_state=opt_state, key=key, epoch=2, config=CONFIG,
                          extra={"history": history, "val_losses": np.array([0.5, 0.25])})
    assert out == path and path.exists()  # the exact name: np.savez must not have appended ".npz"
    assert not (tmp_path / "run.ckpt.npz").exists()

    template = make_opt_state(make_params(dtype, seed=1))
    ck = load_checkpoint(path, opt_state_template=template)
    assert isinstance(ck, Checkpoint)
    assert_tree_bit_equal(ck.params, params)
    assert isinstance(ck.params, list) and set(ck.params[0]) == {"W", "b"}
    assert isinstance(ck.opt_state, AdamLike)
    assert_tree_bit_equal(ck.opt_state, opt_state)
    assert ck.opt_state.step.dtype == jnp.int32 and int(ck.opt_state.step) == 17
    if key_kind == "typed":
        assert jax.dtypes.issubdtype(ck.key.dtype, jax.dtypes.prng_key)
        assert jax.random.key_impl(ck.key) == jax.random.key_impl(key)
        np.testing.assert_array_equal(jax.random.key_data(ck.key), jax.random.key_data(key))
    else:
        assert ck.key.dtype == jnp.uint32
        np.testing.assert_array_equal(ck.key, key)
    # The restored key must drive the same random stream as the original.
    np.testing.assert_array_equal(jax.random.normal(ck.key, (4,)), jax.random.normal(key, (4,)))
    assert ck.epoch == 2 and isinstance(ck.epoch, int)
    assert ck.config == CONFIG
    assert ck.extra["history"] == history
    np.testing.assert_array_equal(ck.extra["val_losses"], [0.5, 0.25])


def test_without_template_opt_state_is_flat_leaf_list(tmp_path, x64):
    """With no template, opt_state comes back as the leaves in jax flatten order."""
    params = make_params(jnp.float32)
    opt_state = make_opt_state(params)
    path = tmp_path / "c.npz"
    save_checkpoint(path, params=params, opt_state=opt_state, key=None, epoch=0, config={})
    ck = load_checkpoint(path)
    assert ck.key is None
    assert_tree_bit_equal(ck.opt_state, jax.tree_util.tree_leaves(opt_state))


def test_file_is_plain_npz_without_pickle(tmp_path, x64):
    """np.load(allow_pickle=False) reads every entry and none has dtype object; names are readable."""
    params = make_params(jnp.float32)
    path = tmp_path / "c.npz"
    save_checkpoint(path, params=params, opt_state=make_opt_state(params), key=jax.random.key(0),
                    epoch=3, config=CONFIG, extra={"history": [{"epoch": 1, "loss": 1.0}]})
    with np.load(path, allow_pickle=False) as npz:
        entries = {name: npz[name] for name in npz.files}
    assert all(a.dtype != object for a in entries.values())
    assert {"params/0/W", "params/0/b", "params/1/W", "params/1/b", "opt_state/00000",
            "key", "epoch", "config", "format", "meta", "extra/history"} <= set(entries)
    assert entries["epoch"].dtype == np.int64 and entries["epoch"] == 3
    assert entries["key"].dtype == np.uint32
    assert json.loads(str(entries["config"])) == CONFIG
    np.testing.assert_array_equal(entries["params/1/W"], params[1]["W"])


def test_other_pytrees_and_extended_dtypes_round_trip(tmp_path, x64):
    """Nested dict/tuple params and a bfloat16 leaf survive; a NamedTuple params tree needs a template."""
    params = {"enc": ({"W": jnp.arange(6.0).reshape(2, 3)}, None), "scale": jnp.asarray([1.5], jnp.bfloat16)}
    path = tmp_path / "c.npz"
    save_checkpoint(path, params=params, opt_state=(), key=None, epoch=1, config={})
    ck = load_checkpoint(path)
    assert_tree_bit_equal(ck.params, params)
    assert ck.params["scale"].dtype == jnp.bfloat16

    nt = AdamLike(step=jnp.asarray(1, jnp.int32), mu=[jnp.ones(2)], nu=[jnp.zeros(2)])
    save_checkpoint(path, params=nt, opt_state=(), key=None, epoch=1, config={})
    with pytest.raises(CheckpointError, match="params_template"):
        load_checkpoint(path)
    assert_tree_bit_equal(load_checkpoint(path, params_template=nt).params, nt)


def _save_valid(path, seed=0):
    params = make_params(jnp.float32, seed=seed)
    save_checkpoint(path, params=params, opt_state=make_opt_state(params), key=jax.random.key(seed),
                    epoch=seed, config=CONFIG)


def test_failed_replace_leaves_old_file_and_no_temp(tmp_path, x64, monkeypatch):
    """If the final rename fails, the old checkpoint is byte-identical and no temp file remains."""
    path = tmp_path / "c.npz"
    _save_valid(path, seed=0)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        _save_valid(path, seed=1)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_failed_write_midway_leaves_old_file_and_no_temp(tmp_path, x64, monkeypatch):
    """An error while the archive is being written (partial temp file) never reaches the target."""
    path = tmp_path / "c.npz"
    _save_valid(path, seed=0)
    before = path.read_bytes()
    real_savez = np.savez

    def partial_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt  # even a Ctrl-C mid-write must clean up

    monkeypatch.setattr(ckpt.np, "savez", partial_savez)
    with pytest.raises(KeyboardInterrupt):
        _save_valid(path, seed=1)
    monkeypatch.setattr(ckpt.np, "savez", real_savez)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
    assert load_checkpoint(path).epoch == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_params_refused_and_old_file_untouched(tmp_path, x64, bad):
    """NaN/inf params raise CheckpointError and the previous checkpoint stays as it was."""
    path = tmp_path / "c.npz"
    _save_valid(path, seed=0)
    before = path.read_bytes()
    params = make_params(jnp.float32)
    params[1]["b"] = params[1]["b"].at[0].set(bad)
    with pytest.raises(CheckpointError, match=r"non-finite params.*params/1/b"):
        save_checkpoint(path, params=params, opt_state=(), key=None, epoch=1, config={})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_truncated_file_gives_checkpoint_error(tmp_path, x64):
    """Truncated checkpoints raise a one-line CheckpointError (a ValueError) naming the file."""
    path = tmp_path / "c.npz"
    _save_valid(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        assert isinstance(info.value, ValueError)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_flipped_byte_in_array_data_gives_checkpoint_error(tmp_path, x64):
    """A corrupted byte inside an array's data is caught (zip CRC) instead of loading wrong params."""
    path = tmp_path / "c.npz"
    _save_valid(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("params/0/W.npy")
    # Past the local header and the .npy header, i.e. inside the float data.
    pos = info.header_offset + 30 + len(info.filename) + 128 + 8
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(path)


def test_garbage_missing_and_foreign_files(tmp_path, x64):
    """Not-a-checkpoint inputs (missing, text, .npy, foreign .npz, missing entry) raise CheckpointError."""
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "nope.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello, not a zip\n")
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(3))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    for bad in (text, npy, foreign):
        with pytest.raises(CheckpointError, match=str(bad.name)):
            load_checkpoint(bad)

    # A real checkpoint with one entry removed.
    good = tmp_path / "good.npz"
    _save_valid(good)
    holed = tmp_path / "holed.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(holed, "w") as dst:
        for item in src.infolist():
            if item.filename != "epoch.npy":
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(CheckpointError, match="'epoch' is missing"):
        load_checkpoint(holed)


def test_template_mismatch_is_reported(tmp_path, x64):
    """A template with a different leaf count, shape or dtype is refused with a clear message."""
    params = make_params(jnp.float32)
    path = tmp_path / "c.npz"
    save_checkpoint(path, params=params, opt_state=make_opt_state(params), key=None, epoch=0, config={})
    with pytest.raises(CheckpointError, match="leaves but the template has"):
        load_checkpoint(path, opt_state_template=(jnp.zeros(1),))
    with pytest.raises(CheckpointError, match="template expects"):
        load_checkpoint(path, opt_state_template=make_opt_state(make_params(jnp.float32, sizes=(6, 4, 3))))
    with pytest.raises(CheckpointError, match="template expects float64"):
        load_checkpoint(path, opt_state_template=make_opt_state(make_params(jnp.float64)))


def test_float64_checkpoint_not_silently_rounded_without_x64(tmp_path, x64):
    """Loading float64 arrays with x64 off raises instead of rounding them to float32."""
    path = tmp_path / "c.npz"
    save_checkpoint(path, params=make_params(jnp.float64), opt_state=(), key=None, epoch=0, config={})
    jax.config.update("jax_enable_x64", False)  # the x64 fixture restores the setting afterwards
    with pytest.raises(CheckpointError, match="jax_enable_x64"):
        load_checkpoint(path)


def test_bad_arguments_raise_before_writing(tmp_path, x64):
    """Unserialisable config, bad epoch or object leaves raise CheckpointError and create no file."""
    params = make_params(jnp.float32)
    path = tmp_path / "c.npz"
    for kwargs in ({"config": {"f": object()}}, {"epoch": -1}, {"epoch": 1.5}, {"key": jnp.zeros(2)}):
        args = dict(params=params, opt_state=(), key=None, epoch=0, config={}) | kwargs
        with pytest.raises(CheckpointError):
            save_checkpoint(path, **args)
    assert os.listdir(tmp_path) == []
