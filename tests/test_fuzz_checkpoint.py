"""Fuzzing jaxmlp.checkpoint's readers, as OSS-Fuzz does numpy's: whatever the bytes, read_meta,
load_state and load_params either succeed or raise a one-line CheckpointError naming the file; any other exception
(zipfile's, zlib's, numpy's, RecursionError, MemoryError) fails the test."""
from __future__ import annotations

import io
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxmlp.checkpoint import CheckpointError, load_params, load_state, read_meta, save_checkpoint
from jaxmlp.optim import adam

FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A small real checkpoint: its bytes, its decompressed members, its template, and a scratch path."""
    rng = np.random.default_rng(0)
    params = [{"W": jnp.asarray(rng.standard_normal((m, n)), jnp.float32), "b": jnp.zeros(n, jnp.float32)}
              for m, n in [(4, 3), (3, 2)]]
    state = {"params": params, "opt_state": adam(1e-3).init(params), "key": jax.random.PRNGKey(0),
             "epoch": jnp.asarray(3, jnp.int32)}
    folder = tmp_path_factory.mktemp("fuzz")
    path = save_checkpoint(folder / "original.npz", state, {"config": {"lr": 0.1}, "history": [{"loss": 1.5}]})
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return path.read_bytes(), members, jax.eval_shape(lambda: state), folder / "mutant.npz"


def only_checkpoint_errors(path, data: bytes, template) -> None:
    path.write_bytes(data)
    for load in (read_meta, lambda p: load_state(p, template), load_params):
        try:
            load(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)


# An edit: (operation, where, payload). Offsets are taken modulo the length, and half of them are
# aimed just past a zip signature or npy magic, where the structure that parsers trust lives.
EDITS = st.lists(st.tuples(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]),
                           st.tuples(st.booleans(), st.integers(0, 1 << 20), st.integers(0, 80)),
                           st.binary(min_size=1, max_size=12)), min_size=1, max_size=4)
HOT = re.compile(rb"PK\x01\x02|PK\x03\x04|PK\x05\x06|PK\x06\x06|PK\x06\x07|\x93NUMPY")


def apply_edits(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for op, (aimed, anywhere, delta), payload in edits:
        hot = [m.start() for m in HOT.finditer(data)]
        i = (hot[anywhere % len(hot)] + delta if aimed and hot else anywhere) % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= payload[0] or 0xFF
        elif op == "overwrite":
            data[i:i + len(payload)] = payload
        elif op == "insert":
            data[i:i] = payload
        elif op == "delete":
            del data[i:i + len(payload)]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def zip_of(members: dict[str, bytes], compress: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@settings(max_examples=700, **FUZZ)
@given(edits=EDITS)
def test_mutated_file_bytes(original, edits):
    """Flipped, overwritten, inserted, deleted and truncated bytes anywhere in a real checkpoint."""
    data, _, template, path = original
    only_checkpoint_errors(path, apply_edits(data, edits), template)


HEADER_VALUES = st.one_of(
    st.sampled_from(["'<f4'", "'>f4'", "'<f8'", "'|O'", "'<U19'", "'|u1'", "'<i4'", "'|V4'", "'<M8[s]'",
                     "[('a', '<f4')]", "'bogus'", "False", "True", "None", "0", "()", "(3,)", "(2, 3)", "(4, 3)",
                     "(-1,)", "(9223372036854775807, 9223372036854775807)", "(" * 300, "[" * 50 + "]" * 50]),
    st.tuples(st.integers(-3, 1 << 62)).map(repr), st.text(max_size=20).map(repr))
HEADERS = st.fixed_dictionaries({"descr": HEADER_VALUES, "fortran_order": HEADER_VALUES, "shape": HEADER_VALUES},
                                optional={"extra": HEADER_VALUES}).map(
    lambda d: "{" + ", ".join(f"'{k}': {v}" for k, v in d.items()) + "}")


@settings(max_examples=450, **FUZZ)
@given(which=st.integers(0, 1 << 10), edits=EDITS, header=st.none() | HEADERS,
       version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x01\x01"]), tail=st.integers(-8, 8),
       compress=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_mutated_npy_headers(original, which, edits, header, version, tail, compress):
    """Edited or hand-written npy headers inside otherwise valid zips (re-zipped, so CRCs pass)."""
    _, members, template, path = original
    members = dict(members)
    name = sorted(members)[which % len(members)]
    npy = members[name]
    if header is None:  # edit bytes within the header (the first 128 bytes) and data
        npy = npy[:10] + apply_edits(npy[10:128], edits) + npy[128:]
    else:
        text = header.encode("utf-8", "replace") + b"\n"
        length = len(text).to_bytes(2 if version[0] == 1 else 4, "little")
        npy = b"\x93NUMPY" + version + length + text + npy[128:]
    members[name] = npy[:len(npy) + tail] if tail < 0 else npy + bytes(tail)
    only_checkpoint_errors(path, zip_of(members, compress), template)


ARRAYS = st.tuples(st.sampled_from(["<f4", ">f4", "<f8", "<i4", "|u1", "|b1", "<U3", "<c8"]),
                   st.lists(st.integers(0, 4), max_size=3), st.booleans()).map(
    lambda t: np.ones(t[1], t[0]) if not t[2] else np.asfortranarray(np.ones(t[1] + [2, 2], t[0])))


@settings(max_examples=250, **FUZZ)
@given(picks=st.lists(st.tuples(st.integers(0, 1 << 10), ARRAYS), max_size=6),
       drop=st.sets(st.integers(0, 20), max_size=3), noise=st.binary(max_size=512))
def test_random_members(original, picks, drop, noise):
    """Members of the right names with random arrays in them, members dropped, random members added."""
    _, members, template, path = original
    names = sorted(members)
    members = {n: members[n] for i, n in enumerate(names) if i not in drop}
    for which, arr in picks:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr)
        members[names[which % len(names)]] = buf.getvalue()
    if noise:
        members[noise[:8].hex() + ".npy"] = noise
    only_checkpoint_errors(path, zip_of(members, zipfile.ZIP_STORED), template)


@settings(max_examples=250, **FUZZ)
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"]))
def test_random_bytes(original, data, prefix):
    """Random bytes, some starting like a zip or an npy file."""
    _, _, template, path = original
    only_checkpoint_errors(path, prefix + data, template)
