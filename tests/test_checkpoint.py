"""Tests for jaxmlp.checkpoint: bit-exact round trips against a template, no pickle, atomic writes,
and a one-line CheckpointError naming the file and the member for every mismatched, corrupt or
hostile file (zip bombs refused from the zip directory, in bounded time and memory)."""
from __future__ import annotations

import io
import json
import os
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import reset_peak_rss

from jaxmlp import bench, checkpoint as checkpoint_module
from jaxmlp._compat import enable_x64
from jaxmlp.checkpoint import FORMAT, MAX_MEMBERS, CheckpointError, load_state, read_meta, save_checkpoint
from jaxmlp.optim import AdamState, adam


class TrainState(NamedTuple):
    """The shape of the engine's state: params, a NamedTuple optimizer state, a raw key, counters."""

    params: list
    opt_state: Any
    key: jax.Array
    epoch: jax.Array
    step: jax.Array


def make_state(dtype=jnp.float32, sizes=(6, 5, 3), seed=0) -> TrainState:
    rng = np.random.default_rng(seed)
    params = [{"W": jnp.asarray(rng.standard_normal((m, n)), dtype), "b": jnp.asarray(rng.standard_normal(n), dtype)}
              for m, n in zip(sizes[:-1], sizes[1:])]
    # Moments that are not round in binary, so any float conversion would change bits.
    opt_state = adam(1e-3).init(params)._replace(
        step=jnp.asarray(17, jnp.int32),
        mu=jax.tree_util.tree_map(lambda p: p / 3, params),
        nu=jax.tree_util.tree_map(lambda p: p * p / 7, params))
    key = jax.random.split(jax.random.PRNGKey(seed))[1]  # raw uint32 (2,), non-trivial data
    return TrainState(params, opt_state, key, jnp.asarray(4, jnp.int32), jnp.asarray(1234, jnp.int32))


def template_of(state):
    return jax.eval_shape(lambda: state)


META = {"config": {"hidden": [5], "lr": 0.01, "optimizer": "adam"}, "input_dim": 6, "num_classes": 3,
        "history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": float("nan")}]}


def assert_tree_bit_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert isinstance(x, jax.Array)
        x, y = np.asarray(x), np.asarray(y)
        # Compare bits, not values: catches rounding that value equality at a tolerance would hide.
        assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes())


def refused(call, path, member=None) -> str:
    """Run ``call``; it must raise a one-line CheckpointError naming ``path`` (and ``member``)."""
    with pytest.raises(CheckpointError) as info:
        call()
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in msg
    assert str(path) in msg, msg
    if member is not None:
        assert repr(member) in msg, msg
    return msg


@pytest.fixture
def saved(tmp_path):
    """A valid float32 checkpoint, its state and its template."""
    state = make_state()
    path = save_checkpoint(tmp_path / "c.npz", state, META)
    return path, state, template_of(state)


# ----------------------------------------------------------------------------- helpers for bad files

W = "state/params/0/W"  # the first leaf read: a (6, 5) float32 array
W_GOOD = np.ones((6, 5), np.float32)



def npy(arr, **kw) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=True, **kw)
    return buf.getvalue()


def raw_npy(header: str, version=1, length=None, data=None) -> bytes:
    """An npy file with a hand-written header dict (and a header length that may lie)."""
    data = W_GOOD.tobytes() if data is None else data
    text = header.encode() + b"\n"
    fmt = "<H" if version == 1 else "<I"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(fmt, len(text) if length is None else length) + text + data


def rewrite(src: Path, dst: Path, replace=None, drop=(), compress=zipfile.ZIP_STORED) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with members (npz names) replaced by raw bytes or dropped."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compress) as zout:
        for name in zin.namelist():
            key = name.removesuffix(".npy")
            if key not in drop and key not in replace:
                zout.writestr(name, zin.read(name))
        for key, data in replace.items():
            zout.writestr(key + ".npy", data)
    return dst


def raw_zip(members) -> bytes:
    """Zip bytes from (name, method, stored data, crc, file_size): a tiny writer that may lie."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in members:
        n = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size, len(n), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(out)) + n
        out += b"PK\x03\x04" + fields + n + data
    end = struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + b"PK\x05\x06" + end)


def stored(name, data):
    return (name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))


@pytest.fixture(scope="module")
def gib_of_zeros():
    """A deflate stream that inflates to an npy header plus 1 GiB of zeros (~1 MB), and its CRC.

    Built from 1 MiB full-flush blocks: a full flush resets the compressor, so every all-zero block
    compresses to the same bytes and the stream is written without compressing 1 GiB.
    """
    chunk, n = 1 << 20, 1024
    header = npy(W_GOOD)[:128]  # the header a (6, 5) float32 leaf has
    first = header + bytes(chunk - len(header))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(first) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    stream = head + zeros * (n - 1) + c.flush()
    crc = zlib.crc32(first)
    for _ in range(n - 1):
        crc = zlib.crc32(bytes(chunk), crc)
    return stream, crc, chunk * n


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    """State (params, AdamState, raw key, int32 counters) and meta come back bit-exact, as jax arrays
    of the saved dtypes; float64 keeps its dtype even when loaded with x64 off."""
    with enable_x64(True):
        state = make_state(jnp.dtype(dtype))
        template = template_of(state)
    path = tmp_path / "run.ckpt"
    assert save_checkpoint(path, state, META) == path
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]  # the exact name, no ".npz" added, no temp left
    with enable_x64(False):
        out = load_state(path, template)
    assert isinstance(out, TrainState) and isinstance(out.opt_state, AdamState)
    assert isinstance(out.params, list) and set(out.params[0]) == {"W", "b"}
    assert_tree_bit_equal(out, state)
    assert out.params[0]["W"].dtype == dtype and out.key.dtype == jnp.uint32 and out.epoch.dtype == jnp.int32
    np.testing.assert_array_equal(jax.random.normal(out.key, (4,)), jax.random.normal(state.key, (4,)))
    meta = read_meta(path)
    assert meta["config"] == META["config"] and meta["history"][0] == META["history"][0]
    assert np.isnan(meta["history"][1]["loss"])  # a diverged run's history survives


def test_template_may_hold_arrays(saved):
    """A template of real arrays (not ShapeDtypeStructs) works the same; only shapes and dtypes count."""
    path, state, _ = saved
    assert_tree_bit_equal(load_state(path, make_state(seed=1)), state)


def test_file_is_plain_npz_without_pickle(saved):
    """np.load(allow_pickle=False) reads every member; names follow the key paths; meta is JSON bytes."""
    path, state, _ = saved
    with np.load(path, allow_pickle=False) as npz:
        entries = {name: npz[name] for name in npz.files}
    assert set(entries) == {"format", "meta", "state/key", "state/epoch", "state/step", "state/opt_state/step"} | {
        f"state/{part}{i}/{leaf}" for part in ("params/", "opt_state/mu/", "opt_state/nu/")
        for i in (0, 1) for leaf in ("W", "b")}
    assert str(entries["format"]) == FORMAT
    assert json.loads(entries["meta"].tobytes())["config"] == META["config"]
    np.testing.assert_array_equal(entries["state/params/1/W"], state.params[1]["W"])


# ----------------------------------------------------------------------------- saving refuses bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_params_refused_and_old_file_untouched(saved, bad):
    """NaN/inf in state.params raise CheckpointError naming the leaf; the old file stays as it was."""
    path, state, _ = saved
    before = path.read_bytes()
    state.params[1]["b"] = state.params[1]["b"].at[0].set(bad)
    refused(lambda: save_checkpoint(path, state, META), path, "state/params/1/b")
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == ["c.npz"]


def test_non_finite_outside_params_is_stored(tmp_path):
    """Only params are checked for finiteness; a state without a params field is not checked at all."""
    state = make_state()
    state = state._replace(opt_state=state.opt_state._replace(nu=jax.tree_util.tree_map(lambda v: v + jnp.inf,
                                                                                         state.opt_state.nu)))
    save_checkpoint(tmp_path / "a.npz", state, {})
    save_checkpoint(tmp_path / "b.npz", {"w": jnp.asarray([np.nan])}, {})
    assert np.isinf(load_state(tmp_path / "a.npz", template_of(state)).opt_state.nu[0]["W"]).all()


# The states are built inside the test, not at import: a JAX array made while pytest collects starts JAX's
# threads in the process that mutation testing's fork server forks from (docs/mutation.md).
@pytest.mark.parametrize("state, meta, member", [
    (lambda: {"k": jax.random.key(0)}, {}, "state/k"),                      # typed key: store key_data
    (lambda: {"w": jnp.ones(2, jnp.bfloat16)}, {}, "state/w"),              # no exact npy dtype name
    (lambda: {"w": np.array(["a"])}, {}, "state/w"),
    (lambda: {"w": jnp.ones(2)}, {"f": object()}, "meta"),
    (lambda: {"w": jnp.ones(2)}, ["not", "a", "dict"], "meta"),
], ids=["typed-key", "bfloat16", "strings", "object-meta", "list-meta"])
def test_unstorable_state_or_meta_refused_before_writing(tmp_path, state, meta, member):
    """Leaves numpy cannot name exactly and non-JSON meta raise CheckpointError; no file is created."""
    refused(lambda: save_checkpoint(tmp_path / "c.npz", state(), meta), tmp_path / "c.npz", member)
    assert os.listdir(tmp_path) == []


def test_deeply_nested_meta_refused_on_save(tmp_path):
    nested = []
    for _ in range(100_000):
        nested = [nested]
    refused(lambda: save_checkpoint(tmp_path / "c.npz", {}, {"x": nested}), tmp_path / "c.npz", "meta")


def test_folder_as_path_refused(tmp_path):
    refused(lambda: save_checkpoint(tmp_path, make_state(), {}), tmp_path)


# ----------------------------------------------------------------------------- atomic writes


def test_failed_replace_leaves_old_file_and_no_temp(saved, monkeypatch):
    """If the final rename fails, the old checkpoint is byte-identical and no temp file remains."""
    path, state, _ = saved
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, make_state(seed=1), META)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == ["c.npz"]


def test_interrupt_midway_leaves_old_file_and_no_temp(saved, monkeypatch):
    """A Ctrl-C while the archive is half written never reaches the target and leaves no temp."""
    path, state, template = saved
    before = path.read_bytes()

    def partial_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", partial_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_state(seed=1), META)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == ["c.npz"]
    assert_tree_bit_equal(load_state(path, template), state)


# ----------------------------------------------------------------------------- mismatched templates


@pytest.mark.parametrize("sizes, dtype, member", [
    ((6, 4, 3), "float32", "state/params/0/W"),    # shape
    ((6, 5, 3), "float64", "state/params/0/W"),    # dtype: no casts, even widening ones
    ((6, 5, 3, 2), "float32", "state/params/2/W"),  # a leaf the file lacks
    ((6, 5), "float32", "state/opt_state/mu/1/W"),  # members the template lacks
])
def test_template_mismatch_names_the_member(saved, sizes, dtype, member):
    path = saved[0]
    with enable_x64(True):
        template = template_of(make_state(jnp.dtype(dtype), sizes))
    refused(lambda: load_state(path, template), path, member)


def test_typed_key_template_refused(saved):
    path, state, _ = saved
    template = template_of(state._replace(key=jax.random.key(0)))
    refused(lambda: load_state(path, template), path)


# ----------------------------------------------------------------------------- params without a template


def test_load_params_without_a_template(saved, tmp_path):
    """load_params rebuilds the params from the member names alone (a list of {"W", "b"} layers, bit
    for bit), or from a described structure (``describe_tree``: tuples as lists, NamedTuple fields as
    dict keys, int dict keys kept)."""
    path, state, _ = saved
    got = checkpoint_module.load_params(path)
    assert isinstance(got, list) and [set(layer) for layer in got] == [{"W", "b"}] * 2
    assert_tree_bit_equal(got, state.params)
    params = {"pair": (jnp.ones(2), jnp.zeros((), jnp.int32)), "by": {3: state.opt_state._replace(mu=None, nu=None)}}
    meta = {"params_tree": checkpoint_module.describe_tree(params)}
    save_checkpoint(tmp_path / "p.npz", state._replace(params=params), meta)
    got = checkpoint_module.load_params(tmp_path / "p.npz")
    assert set(got) == {"pair", "by"} and isinstance(got["pair"], list) and got["by"][3] == {"step": 17}
    assert_tree_bit_equal(got["pair"], list(params["pair"]))


def test_load_params_refuses_what_it_cannot_rebuild_or_hold(saved, tmp_path):
    """A described structure that disagrees with the members, or params larger than max_bytes, are a
    CheckpointError naming the file (nothing is read past the zip directory and the headers)."""
    path, state, _ = saved
    refused(lambda: checkpoint_module.load_params(path, max_bytes=100), path, W)
    lying = save_checkpoint(tmp_path / "l.npz", state, {"params_tree": [[["index", 0], ["key", "W"]]]})
    refused(lambda: checkpoint_module.load_params(lying), lying)
    junk = save_checkpoint(tmp_path / "j.npz", state, {"params_tree": [["bogus"]]})
    refused(lambda: checkpoint_module.load_params(junk), junk, "meta")
    scalar = save_checkpoint(tmp_path / "s.npz", {"params": jnp.ones(3)}, {})
    assert np.array_equal(checkpoint_module.load_params(scalar), np.ones(3))


# ----------------------------------------------------------------------------- corrupt and hostile files


@pytest.mark.parametrize("data", [
    npy(W_GOOD.astype(np.float16)), npy(W_GOOD.astype(np.int8)), npy(W_GOOD.astype(bool)),
    npy(W_GOOD.astype(np.complex64)), npy(W_GOOD.astype(">f4")), npy(W_GOOD[..., None]),
    npy(W_GOOD.T), npy(np.asfortranarray(W_GOOD)), npy(W_GOOD.reshape(-1)),
    npy(W_GOOD)[:-4], npy(W_GOOD) + b"\0" * 4, b"\x93NUMPY\x03\x00" + npy(W_GOOD)[8:], b"not npy",
    raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 500 + "6, 5" + ")" * 500 + "}"),
    raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 5), 'x': 1}"),
    raw_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (6, 5)}"),
    raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 5)}", length=0xFFFF),
    raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 5)}", version=2, length=1 << 31),
], ids=["float16", "int8", "bool", "complex", "big-endian", "3-D", "transposed", "fortran", "flat", "short",
        "long", "npy-v3", "garbage", "nested-header", "extra-key", "int-order", "long-header", "huge-header"])
def test_wrong_member_content_refused(saved, data):
    """No cast, reshape or transposition is accepted; damaged headers and sizes are refused."""
    path, _, template = saved
    bad = rewrite(path, path.with_name("bad.npz"), {W: data})
    refused(lambda: load_state(bad, template), bad, W)


def test_pickled_object_member_refused_without_unpickling(saved, tmp_path):
    """An object array (a pickle) in a member is refused from its header; nothing is unpickled."""
    path, _, template = saved
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (marker,))

    trap = np.empty(1, object)
    trap[0] = Trap()
    assert np.lib.format.read_array(io.BytesIO(npy(trap)), allow_pickle=True) is not None and marker.exists()
    marker.unlink()  # the trap works when unpickled; the loader must never get that far
    for member, load in [(W, lambda p: load_state(p, template)), ("meta", read_meta), ("format", read_meta)]:
        bad = rewrite(path, tmp_path / "bad.npz", {member: npy(trap)})
        refused(lambda: load(bad), bad, member)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["jaxmlp-checkpoint/1", "jaxmlp-checkpoint/22", ""])
def test_wrong_format_refused(saved, fmt):
    path, _, template = saved
    bad = rewrite(path, path.with_name("bad.npz"), {"format": npy(np.array(fmt))})
    refused(lambda: load_state(bad, template), bad, "format")
    refused(lambda: read_meta(bad), bad, "format")


@pytest.mark.parametrize("text", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000, b"[1, 2]", b"\xff\xfe{",
                                  b"1" * 10_000])
def test_bad_meta_json_refused(saved, text):
    """Deeply nested, truncated, non-object or non-UTF-8 meta JSON gives CheckpointError, not RecursionError."""
    path = saved[0]
    bad = rewrite(path, path.with_name("bad.npz"), {"meta": npy(np.frombuffer(text, np.uint8))})
    refused(lambda: read_meta(bad), bad, "meta")


def test_missing_and_extra_members_refused(saved):
    path, _, template = saved
    for member in (W, "format"):
        bad = rewrite(path, path.with_name("bad.npz"), drop=[member])
        refused(lambda: load_state(bad, template), bad, member)
    bad = rewrite(path, path.with_name("bad.npz"), drop=["meta"])
    refused(lambda: read_meta(bad), bad, "meta")
    bad = rewrite(path, path.with_name("bad.npz"), {"state/params/9/W": npy(W_GOOD)})
    refused(lambda: load_state(bad, template), bad, "state/params/9/W")


def test_duplicate_member_refused(saved):
    path, _, template = saved
    bad = path.with_name("bad.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        rewrite(path, bad)
        with zipfile.ZipFile(bad, "a") as zf:
            zf.writestr(W + ".npy", npy(W_GOOD))
    refused(lambda: load_state(bad, template), bad, W)


def test_unsupported_compression_and_encryption_refused(saved):
    """LZMA members (whose header may ask for a huge dictionary) and encrypted ones are refused."""
    path, _, template = saved
    bad = rewrite(path, path.with_name("bad.npz"), compress=zipfile.ZIP_LZMA)
    refused(lambda: load_state(bad, template), bad, "format")
    data = bytearray(path.read_bytes())
    (cd,) = struct.unpack_from("<I", data, len(data) - 22 + 16)  # the central directory's offset
    assert data[cd + 46:cd + 46 + len("format.npy")] == b"format.npy"
    data[cd + 8] |= 1  # the first member's "encrypted" flag
    bad.write_bytes(bytes(data))
    refused(lambda: load_state(bad, template), bad, "format")


def test_deflated_members_are_read(saved):
    """Compressed .npz files (np.savez_compressed) are accepted: only sizes and headers matter."""
    path, state, template = saved
    good = rewrite(path, path.with_name("deflated.npz"), compress=zipfile.ZIP_DEFLATED)
    assert_tree_bit_equal(load_state(good, template), state)


def test_flipped_byte_in_array_data_is_caught(saved):
    """A corrupted byte inside a leaf's data is caught by the zip CRC instead of loading wrong params."""
    path, _, template = saved
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(W + ".npy")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    data[info.header_offset + 30 + name_len + extra_len + 128 + 8] ^= 0xFF
    bad = path.with_name("bad.npz")
    bad.write_bytes(bytes(data))
    refused(lambda: load_state(bad, template), bad, W)


def test_truncated_garbage_and_missing_files_refused(saved, tmp_path):
    path, _, template = saved
    data = path.read_bytes()
    for cut in (0, 30, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        refused(lambda: load_state(bad, template), bad)
        refused(lambda: read_meta(bad), bad)
    text = tmp_path / "text.npz"
    text.write_text("hello, not a zip\n")
    single = tmp_path / "a.npy"
    np.save(single, np.arange(3))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    for bad in (text, single, foreign, tmp_path / "nope.npz", tmp_path):
        refused(lambda: load_state(bad, template), bad)
        refused(lambda: read_meta(bad), bad)


def test_too_many_members_refused(saved, tmp_path):
    path, _, template = saved
    bad = tmp_path / "many.npz"
    rewrite(path, bad)
    with zipfile.ZipFile(bad, "a") as zf:
        for i in range(MAX_MEMBERS):
            zf.writestr(f"x{i}", b"")
    refused(lambda: load_state(bad, template), bad)
    refused(lambda: read_meta(bad), bad)


def _peak_rss_mib() -> float:
    """The peak since the last reset_peak_rss() (VmHWM), so an earlier test's peak cannot hide this one's."""
    return bench.peak_rss_mb()


@pytest.mark.parametrize("member", [W, "meta"])
def test_zip_bomb_refused_from_directory(saved, tmp_path, gib_of_zeros, member):
    """A ~1 MB file whose member inflates to 1 GiB is refused from the zip directory, fast, in small memory."""
    path, _, template = saved
    stream, crc, size = gib_of_zeros
    with zipfile.ZipFile(path) as zf:
        members = [stored(n, zf.read(n)) for n in zf.namelist() if n != member + ".npy"]
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(raw_zip(members + [(member + ".npy", zipfile.ZIP_DEFLATED, stream, crc, size)]))
    assert bomb.stat().st_size < 2 << 20
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo(member + ".npy").file_size == 1 << 30  # a real bomb: a zip reader would inflate it
    reset_peak_rss()
    rss, start = _peak_rss_mib(), time.perf_counter()
    msg = refused(lambda: load_state(bomb, template) if member == W else read_meta(bomb), bomb, member)
    assert "declares 1073741824 bytes" in msg
    assert time.perf_counter() - start < 0.5
    assert _peak_rss_mib() - rss < 64


def test_lying_directory_reads_only_the_declared_bytes(saved, tmp_path, gib_of_zeros):
    """A member that declares the expected size but inflates to 1 GiB is read up to that size, then
    its CRC fails: the lie costs neither time nor memory."""
    path, _, template = saved
    stream, crc, _ = gib_of_zeros
    with zipfile.ZipFile(path) as zf:
        members = [stored(n, zf.read(n)) for n in zf.namelist() if n != W + ".npy"]
        size = zf.getinfo(W + ".npy").file_size
    bomb = tmp_path / "liar.npz"
    bomb.write_bytes(raw_zip(members + [(W + ".npy", zipfile.ZIP_DEFLATED, stream, crc, size)]))
    reset_peak_rss()
    rss, start = _peak_rss_mib(), time.perf_counter()
    refused(lambda: load_state(bomb, template), bomb, W)
    assert time.perf_counter() - start < 0.5 and _peak_rss_mib() - rss < 64


# ----------------------------------------------------------------------------- what mutation testing found unpinned
# (docs/mutation.md): the refusals above were checked for the path and the member; their words were not.


def test_every_refusal_in_full(saved, tmp_path, monkeypatch):
    """Each refusal's whole message: the file, the member, what it holds and what was expected."""
    path, _, template = saved
    bad = path.with_name("bad.npz")
    two = {"a/b": jnp.ones(1), "a": {"b": jnp.ones(1)}}

    def says(call, where, text):
        with pytest.raises(CheckpointError) as err:
            call()
        assert str(err.value) == f"{where}: {text}"

    says(lambda: save_checkpoint(tmp_path / "d.npz", two, {}), tmp_path / "d.npz",
         "member 'state/a/b': two state leaves share this name")
    says(lambda: load_state(path, two), path, "member 'state/a/b': two state leaves share this name")
    nan_state = make_state()._replace(params=[{"W": jnp.full((2, 2), jnp.nan), "b": jnp.ones(2)}])
    says(lambda: save_checkpoint(tmp_path / "n.npz", nan_state, {}), tmp_path / "n.npz",
         "member 'state/params/0/W': refusing to save non-finite params (NaN or inf); nothing was written")
    says(lambda: save_checkpoint(tmp_path / "o.npz", {"w": jnp.ones(2)}, {"f": object()}), tmp_path / "o.npz",
         "member 'meta': TypeError: object is not JSON-serialisable")
    says(lambda: read_meta(rewrite(path, bad, {"meta": npy(np.frombuffer(b"[1, 2", np.uint8))})), bad,
         "member 'meta': not JSON (JSONDecodeError: Expecting ',' delimiter: line 1 column 6 (char 5))")
    for arr, held in ((np.zeros((2, 3), np.uint8), "|u1[2, 3]"), (np.zeros(3, np.int16), "<i2[3]")):
        says(lambda: read_meta(rewrite(path, bad, {"meta": npy(arr)})), bad,
             f"member 'meta': holds {held}, expected 1-D uint8 JSON text (no casts)")
    tail = "the saved state's structure differs from the template's (1 such members; a different model or optimizer?)"
    says(lambda: load_state(rewrite(path, bad, drop=[W]), template), bad, f"member '{W}': missing: {tail}")
    says(lambda: load_state(rewrite(path, bad, {"state/params/9/W": npy(W_GOOD)}), template), bad,
         f"member 'state/params/9/W': not in the template: {tail}")
    for arr, held in ((np.array([FORMAT]), "<U19[1]"), (np.array(3, np.int64), "<i8[]")):
        says(lambda: read_meta(rewrite(path, bad, {"format": npy(arr)})), bad,
             f"member 'format': holds {held}, expected a 0-d string (no casts)")
    says(lambda: read_meta(rewrite(path, bad, {"format": npy(np.array("x" * 100))})), bad,
         f"member 'format': '{'x' * 80}' is not {FORMAT!r} (not a checkpoint of this version)")
    says(lambda: read_meta(rewrite(path, bad, drop=["format"])), bad,
         "member 'format': missing (expected a 0-d string)")
    says(lambda: load_state(rewrite(path, bad, {W: npy(W_GOOD.astype(np.float16))}), template), bad,
         f"member '{W}': holds <f2[6, 5], expected float32[6, 5] (no casts)")
    says(lambda: load_state(rewrite(path, bad, {W: npy(np.asfortranarray(W_GOOD))}), template), bad,
         f"member '{W}': holds Fortran-order <f4[6, 5], expected float32[6, 5] (no casts)")
    says(lambda: load_state(rewrite(path, bad, {W: npy(W_GOOD)[:-4]}), template), bad,
         f"member '{W}': declares 244 bytes, not its header plus 120")
    monkeypatch.setattr(checkpoint_module, "MAX_META_BYTES", 10)
    says(lambda: save_checkpoint(tmp_path / "m.npz", {"w": jnp.ones(2)}, {"key": "a long value"}), tmp_path / "m.npz",
         "member 'meta': 23 bytes of JSON, more than 10")
