"""Fuzzing the readers of untrusted files: jaxmlp.data's IDX reader (parse_idx / read_idx) and the .npy
path of read_images.

Only the documented errors may escape (IDXError for IDX, DataError for images), and whatever a file's
header claims or its gzip data inflates to, memory stays bounded: a 1 MB gzip that inflates to 1 GiB, or
a header declaring more than the file holds, is refused without a large allocation.
"""
import gzip
import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxmlp import data

REPO = Path(__file__).resolve().parents[1]
def fuzz(n: int):
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def encode(array: np.ndarray) -> bytes:
    """Reference IDX encoding (struct, sharing nothing with jaxmlp.data)."""
    code = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _real_seeds() -> list[bytes]:
    """Small pieces of real MNIST (20 images, 200 labels), header counts adjusted, when present."""
    seeds = []
    for folder in (os.environ.get("JAXMLP_DATA_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        for stem, keep in (("t10k-images-idx3-ubyte", 20), ("t10k-labels-idx1-ubyte", 200)):
            path = Path(folder or "/nonexistent") / f"{stem}.gz"
            if path.is_file():
                seeds.append(encode(data.read_idx(path)[:keep]))
        if seeds:
            break
    return seeds


def _synthetic_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    shapes = [(3,), (2, 3), (2, 2, 3), (0, 4), (1, 1, 1, 2)]
    return [encode(rng.integers(0, 100, shape).astype(np.dtype(dt).newbyteorder("=")))
            for dt, shape in zip(DTYPES.values(), shapes * 2)]


SEEDS = _synthetic_seeds() + _real_seeds()


def _mutate(draw, raw: bytes) -> bytes:
    """One random damage: flip, truncate, insert, delete, or rewrite a header field (huge dims too)."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "dim", "ndim", "code"]))
    i = draw(st.integers(0, max(len(raw) - 1, 0)))
    if kind == "flip" and raw:
        return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    if kind == "truncate":
        return raw[:i]
    if kind == "insert":
        return raw[:i] + draw(st.binary(min_size=1, max_size=16)) + raw[i:]
    if kind == "delete":
        return raw[:i] + raw[i + draw(st.integers(1, 64)):]
    if kind == "dim" and len(raw) >= 8:
        k = draw(st.integers(0, max(raw[3] - 1, 0)))
        value = draw(st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1, 60000]), st.integers(0, 2**32 - 1)))
        return raw[:4 + 4 * k] + struct.pack(">I", value) + raw[8 + 4 * k:]
    if kind in ("ndim", "code") and len(raw) >= 4:
        pos = 3 if kind == "ndim" else 2
        return raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1:]
    return raw


@st.composite
def damaged_files(draw):
    """A seed file damaged 1-3 times, then stored raw or gzip; or gzip bytes themselves damaged."""
    raw = draw(st.sampled_from(SEEDS))
    container = draw(st.sampled_from(["raw", "gzip", "damaged-gzip"]))
    if container == "damaged-gzip":
        return container, _mutate(draw, gzip.compress(raw, mtime=0))
    for _ in range(draw(st.integers(1, 3))):
        raw = _mutate(draw, raw)
    return container, gzip.compress(raw, mtime=0) if container == "gzip" else raw


def _parses_faithfully_or_raises(blob: bytes) -> None:
    """parse_idx either raises IDXError (one line, naming the input) or returns exactly what the
    bytes encode; any other exception fails the test."""
    try:
        got = data.parse_idx(blob, "fuzz")
    except data.IDXError as err:
        assert str(err).startswith("fuzz: ") and "\n" not in str(err)
        return
    assert encode(got) == (gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)


@fuzz(700)
@given(case=damaged_files())
def test_damaged_idx_files_raise_only_idx_error(case):
    """Damaged real and synthetic IDX files, raw or gzip: IDXError or a faithful decode, nothing else."""
    _parses_faithfully_or_raises(case[1])


@fuzz(700)
@given(blob=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=300).map(lambda b: b"\0\0" + b),
                      st.tuples(st.sampled_from(sorted(DTYPES)), st.integers(1, 4), st.binary(max_size=200))
                      .map(lambda t: bytes([0, 0, t[0], t[1]]) + t[2]),
                      st.binary(max_size=300).map(lambda b: gzip.compress(b, mtime=0)),
                      st.binary(max_size=300).map(lambda b: b"\x1f\x8b" + b)))
def test_random_bytes_raise_only_idx_error(blob):
    """Random bytes, bare or behind IDX magic, a valid IDX type and rank, or gzip: the same property."""
    _parses_faithfully_or_raises(blob)


@fuzz(600)
@given(code=st.sampled_from(sorted(DTYPES)), gz=st.booleans(), payload=st.binary(max_size=64),
       dims=st.lists(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**32 - 1])),
                     min_size=1, max_size=70))
def test_any_declared_dimensions_are_refused_or_read(code, gz, payload, dims):
    """Headers declaring any dimensions (up to 70 of them, up to 2**32-1 each; past NumPy's 64-dim
    limit too) over a small payload: refused with IDXError unless they describe it exactly."""
    raw = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload
    _parses_faithfully_or_raises(gzip.compress(raw, mtime=0) if gz else raw)


@st.composite
def damaged_npy(draw):
    array = draw(st.sampled_from([np.zeros((2, 4), np.uint8), np.ones((1, 2, 3), ">f4"),
                                  np.arange(6, dtype=np.int16).reshape(2, 3)]))
    buf = io.BytesIO()
    np.save(buf, array)
    raw = buf.getvalue()
    for _ in range(draw(st.integers(1, 3))):
        raw = _mutate(draw, raw)
    return raw


@fuzz(200)
@given(raw=damaged_npy())
def test_damaged_npy_files_raise_only_data_error(raw, tmp_path_factory):
    """read_images on damaged .npy files: DataError (one line naming the file) or images, nothing else."""
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    path.write_bytes(raw)
    try:
        images, kind = data.read_images(path)
    except data.DataError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
        return
    assert images.ndim == 2 and kind in ("pixels", "unit")


# ---------------------------------------------------------------- bombs and false claims


def gzip_bomb(path: Path, declared=(60000, 28, 28), inflated: int = 1 << 30) -> None:
    """A valid gzip (~1 MB) of an IDX header declaring `declared` uint8 values followed by `inflated`
    zero bytes. Built from one compressed MiB of zeros after a full flush (a self-contained deflate
    segment), repeated, so building it costs well under a second."""
    header = bytes([0, 0, 0x08, len(declared)]) + struct.pack(f">{len(declared)}I", *declared)
    zeros = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    segment = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    end = comp.flush()[:-8]  # the final block, without the trailer for what comp saw
    crc = zlib.crc32(header)
    for _ in range(inflated >> 20):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (len(header) + inflated) & 0xFFFFFFFF)
    path.write_bytes(head + segment * (inflated >> 20) + end + trailer)


# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak (pytest's, which grows
# over a session) into the child's ru_maxrss across exec, while VmHWM is this process's own.
_CHILD = """
import sys
from jaxmlp import data
def peak_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
before = peak_kib()
for read in (data.read_idx, data.read_images):
    try:
        read(sys.argv[1])
        print("accepted")
    except data.DataError as err:
        print(err)
print(before, peak_kib())
"""


def test_gzip_bomb_is_refused_with_bounded_memory(tmp_path):
    """A 1 MB gzip whose header declares 60000x28x28 (47 MB) and which inflates to 1 GiB is refused by
    read_idx and read_images ("unexpected bytes after the payload") in a child process whose peak RSS
    grows by little more than the declared 47 MB (the old reader peaked at 2.2 GB)."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    gzip_bomb(path)
    assert path.stat().st_size < 1.2e6
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 3, proc.stderr[-2000:]
    for line in lines[:2]:
        assert line.startswith(f"{path}: unexpected bytes after the payload")
    before_kib, peak_kib = map(int, lines[2].split())
    assert peak_kib < 900 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert peak_kib - before_kib < 150 * 1024, f"reading grew RSS by {(peak_kib - before_kib) / 1024:.0f} MiB"


def _peak_traced(read, *args) -> tuple[int, str]:
    """(peak bytes traced, NumPy's array buffers included, while read(*args) runs; its error)."""
    tracemalloc.start()
    try:
        read(*args)
        message = "accepted"
    except data.DataError as err:
        message = str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, message


def test_false_size_claims_are_refused_before_allocating(tmp_path):
    """A raw IDX header declaring more than its file holds, a gzip too small to inflate to its declared
    payload, and any header declaring more than MAX_ARRAY_BYTES are refused with at most a few KiB
    allocated (the limit is checked before the payload array exists)."""
    assert _peak_traced(np.empty, 10**6)[0] >= 10**6  # NumPy's buffers are traced: the check can fail
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 28, 28)
    cases = {
        "raw": (header + bytes(100), "truncated: header declares 47040000 payload bytes, file has 100"),
        "gz": (gzip.compress(header + bytes(100)), "bytes of gzip data can hold"),
        "huge": (bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 2**20, 2**10, 2**10), "more than the 1073741824"),
    }
    for name, (raw, fragment) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        for read in (data.read_idx, data.read_images):
            peak, message = _peak_traced(read, path)
            assert message.startswith(f"{path}: ") and fragment in message
            assert peak < 256 * 1024, f"{name}: {peak} bytes allocated"
    gzip_bomb(tmp_path / "declares-2GiB", declared=(2**21, 2**10), inflated=1 << 20)
    peak, message = _peak_traced(data.read_idx, tmp_path / "declares-2GiB")
    assert "more than the 1073741824" in message and peak < 256 * 1024
