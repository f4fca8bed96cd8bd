"""Tests for jaxmlp.data: IDX parsing/writing, dataset loading, data location, preprocessing."""
import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from jaxmlp import data
from jaxmlp._compat import enable_x64
from jaxmlp.data import load, locate, verify

# The six IDX types, by their on-disk (big-endian) dtype and type code: written out here by hand
# so the reference encoder below shares nothing with jaxmlp.data.
CODES = {("u", 1): 0x08, ("i", 1): 0x09, ("i", 2): 0x0B, ("i", 4): 0x0C, ("f", 4): 0x0D, ("f", 8): 0x0E}
NATIVE = [np.dtype(f"{kind}{size}") for kind, size in CODES]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode_idx(array: np.ndarray) -> bytes:
    """Independent reference IDX encoder (the file format written out with struct)."""
    be = np.dtype(array.dtype).newbyteorder(">")
    code = CODES[(be.kind, be.itemsize)]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(be).tobytes()


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality (NaN payloads and -0.0 included), same dtype, same shape."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Hash stamps of the folders tests load go to a throwaway cache, never to the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)
idx_arrays = st.sampled_from(NATIVE).flatmap(lambda dt: hnp.arrays(dt, shapes))


# ---------------------------------------------------------------- read_idx / write_idx


@FAST
@given(array=idx_arrays, gz=st.booleans())
def test_write_read_round_trip_is_exact(array, gz, tmp_path_factory):
    """Any of the six dtypes, 1-4 dims (0-length dims included), gzip or raw: read(write(a)) == a bit
    for bit, native-endian, and the raw file is exactly the reference encoding."""
    folder = tmp_path_factory.mktemp("rt")
    path = folder / ("a.idx.gz" if gz else "a.idx")
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype.isnative
    assert same_array(back, array)
    raw = path.read_bytes()
    assert (gzip.decompress(raw) if gz else raw) == encode_idx(array)


def test_read_idx_decodes_hand_written_big_endian_bytes(tmp_path):
    """A file written byte by byte decodes to the values the format defines (int16 and float64)."""
    (tmp_path / "i16").write_bytes(bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    a = data.read_idx(tmp_path / "i16")
    assert a.dtype == np.int16 and a.shape == (1, 2) and a.tolist() == [[258, -2]]
    (tmp_path / "f64").write_bytes(bytes([0, 0, 0x0E, 1, 0, 0, 0, 1]) + struct.pack(">d", -1.5))
    assert data.read_idx(tmp_path / "f64").tolist() == [-1.5]


def test_gzip_is_detected_by_magic_not_name(tmp_path):
    """Compression is recognised from the bytes: gzip data named 'x' and raw data named 'x.gz' both load."""
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    (tmp_path / "x").write_bytes(gzip.compress(encode_idx(array)))
    (tmp_path / "x.gz").write_bytes(encode_idx(array))
    assert same_array(data.read_idx(tmp_path / "x"), array)
    assert same_array(data.read_idx(tmp_path / "x.gz"), array)


@pytest.mark.parametrize("raw, fragment", [
    (b"", "truncated"),
    (b"\0\0\x08", "truncated"),
    (b"\x01\0\x08\x01\0\0\0\0", "magic"),
    (b"\0\x02\x08\x01\0\0\0\0", "magic"),
    (b"\0\0\x0A\x01\0\0\0\0", "type code 0x0A"),
    (b"\0\0\x08\0", "0 dimensions"),
    (b"\0\0\x08\x03\0\0\0\x01\0\0\0\x01", "header declares 3 dimensions"),
    (b"\0\0\x0C\x01\0\0\0\x02" + b"\0" * 7, "truncated: header declares 8 payload bytes, file has 7"),
    (b"\0\0\x08\x01\0\0\0\x02" + b"\0" * 3, "unexpected bytes"),
    (gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x07", mtime=0)[:-5], "gzip"),
    (gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x07", mtime=0) + b"junk", "gzip"),
])
def test_malformed_files_raise_idx_error_naming_file(tmp_path, raw, fragment):
    """Each kind of malformed file raises IDXError (a ValueError) whose message names the file and
    the problem."""
    path = tmp_path / "bad-file-idx1-ubyte"
    path.write_bytes(raw)
    with pytest.raises(data.IDXError) as info:
        data.read_idx(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_unreadable_paths_raise_idx_error(tmp_path):
    """A missing file or a folder is reported as IDXError naming the path, not a bare OSError."""
    with pytest.raises(data.IDXError, match="no such file"):
        data.read_idx(tmp_path / "missing.gz")
    with pytest.raises(data.IDXError, match=str(tmp_path)):
        data.read_idx(tmp_path)


def test_write_idx_rejects_unsupported_arrays(tmp_path):
    """dtypes IDX cannot hold and 0-d arrays are refused with ValueError rather than written wrongly."""
    for bad in (np.zeros(3, np.uint16), np.zeros(3, bool), np.zeros(3, np.int64), np.float32(1.0)):
        with pytest.raises(ValueError):
            data.write_idx(tmp_path / "x", bad)


@st.composite
def corrupted(draw):
    array = draw(idx_arrays)
    raw = encode_idx(array)
    kind = draw(st.sampled_from(["truncate", "extend", "flip-header", "gz-truncate", "gz-flip"]))
    if kind == "truncate":
        bad = raw[:draw(st.integers(0, len(raw) - 1))]
    elif kind == "extend":
        bad = raw + draw(st.binary(min_size=1, max_size=8))
    elif kind == "flip-header":
        header = 4 + 4 * array.ndim
        i = draw(st.integers(0, header - 1))
        bad = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    else:
        gz = gzip.compress(raw, mtime=0)
        if kind == "gz-truncate":
            bad = gz[:draw(st.integers(0, len(gz) - 1))]
        else:
            i = draw(st.integers(0, len(gz) - 1))
            bad = gz[:i] + bytes([gz[i] ^ draw(st.integers(1, 255))]) + gz[i + 1:]
    return array, raw, kind, bad


@settings(max_examples=300, deadline=None)
@given(case=corrupted())
def test_corrupted_files_raise_idx_error_or_decode_faithfully(case):
    """Truncations and extensions always raise IDXError. Header byte flips and gzip byte flips either
    raise IDXError or yield exactly what the bytes encode (e.g. int8 read as uint8, or a harmless
    gzip-header field): never another exception, never an array the bytes do not describe."""
    array, raw, kind, bad = case
    try:
        got = data.parse_idx(bad, "f")
    except data.IDXError:
        return
    assert kind not in ("truncate", "extend", "gz-truncate"), "a truncated/extended file was accepted"
    if kind == "gz-flip":
        # CRC-32 and length in the gzip trailer catch payload damage; only header fields may change.
        assert same_array(got, array)
    else:
        assert encode_idx(got) == bad


@settings(max_examples=200, deadline=None)
@given(blob=st.one_of(st.binary(max_size=64),
                      st.binary(max_size=60).map(lambda b: b"\0\0" + b),
                      st.binary(max_size=40).map(lambda b: gzip.compress(b))))
def test_arbitrary_bytes_never_escape_as_other_errors(blob):
    """Random byte strings (raw, IDX-magic-prefixed, gzipped) either parse to the array they encode or
    raise IDXError."""
    try:
        got = data.parse_idx(blob, "f")
    except data.IDXError as err:
        assert str(err).startswith("f: ")
        return
    assert encode_idx(got) == (gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)


# ---------------------------------------------------------------- load_dataset


def make_folder(folder: Path, n_train=6, n_test=4, rows=5, cols=3, gz=True, dotted=False, seed=0):
    """Write a small synthetic dataset in MNIST's layout; return its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        data.write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (False, True), (True, True)])
def test_load_dataset_reads_any_mnist_layout(tmp_path, gz, dotted):
    """.gz or raw, distribution names or the notebook's dotted names, any rows/cols: arrays come back
    exactly, uint8, in Dataset order."""
    arrays = make_folder(tmp_path, rows=7, cols=2, gz=gz, dotted=dotted)
    ds = data.load_dataset(tmp_path)
    assert isinstance(ds, data.Dataset)
    for got, stem in zip(ds, data.FILE_STEMS):
        assert got.dtype == np.uint8 and np.array_equal(got, arrays[stem])
    assert ds.x_train.shape == (6, 7, 2) and ds.y_test.shape == (4,)


def _replace(folder: Path, stem: str, array):
    data.write_idx(folder / f"{stem}.gz", array)


def test_count_mismatch_is_reported(tmp_path):
    """Images and labels of different lengths raise DataError naming both files."""
    make_folder(tmp_path)
    _replace(tmp_path, "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(data.DataError, match="6 images.*5 labels"):
        data.load_dataset(tmp_path)


def test_labels_out_of_range_are_reported(tmp_path):
    """A label >= num_classes raises DataError giving the label, its index and the file."""
    make_folder(tmp_path)
    _replace(tmp_path, "t10k-labels-idx1-ubyte", np.array([0, 9, 10, 1], np.uint8))
    with pytest.raises(data.DataError, match=r"t10k-labels.*label 10 at index 2 .*\[0, 10\)"):
        data.load_dataset(tmp_path)
    _replace(tmp_path, "t10k-labels-idx1-ubyte", np.array([0, 9, 3, 1], np.uint8))
    assert data.load_dataset(tmp_path).y_test.max() == 9
    with pytest.raises(data.DataError, match=r"is outside \[0, 4\)"):
        data.load_dataset(tmp_path, num_classes=4)


@pytest.mark.parametrize("stem, array, fragment", [
    ("train-labels-idx1-ubyte", np.zeros(6, np.int16), "1-D uint8 labels"),
    ("train-labels-idx1-ubyte", np.zeros((6, 1), np.uint8), "1-D uint8 labels"),
    ("t10k-images-idx3-ubyte", np.zeros((4, 15), np.uint8), "3-D uint8 images"),
    ("t10k-images-idx3-ubyte", np.zeros((4, 5, 4), np.uint8), "image shapes differ"),
])
def test_wrong_kinds_of_arrays_are_reported(tmp_path, stem, array, fragment):
    """Wrong dtype, wrong rank and train/test image shapes that disagree raise DataError."""
    make_folder(tmp_path)
    _replace(tmp_path, stem, array)
    with pytest.raises(data.DataError, match=fragment):
        data.load_dataset(tmp_path)


def test_missing_empty_and_partial_folders_suggest_download(tmp_path):
    """Missing folder, empty folder and a missing file give one-line DataErrors that name the folder
    and suggest `jaxmlp download --data-dir`."""
    cases = [tmp_path / "nope", tmp_path / "empty", tmp_path / "partial"]
    (tmp_path / "empty").mkdir()
    make_folder(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-images-idx3-ubyte.gz").unlink()
    for folder, fragment in zip(cases, ["does not exist", "is empty", "t10k-images-idx3-ubyte"]):
        with pytest.raises(data.DataError) as info:
            data.load_dataset(folder)
        msg = str(info.value)
        assert "\n" not in msg and str(folder) in msg and fragment in msg
        assert f"jaxmlp download --data-dir {folder}" in msg


def test_truncated_file_is_reported(tmp_path):
    """A truncated gzip member, and a raw file cut short, raise IDXError naming that file."""
    make_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.IDXError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        data.load_dataset(tmp_path)
    path.write_bytes(encode_idx(np.zeros((6, 5, 3), np.uint8))[:-1])
    with pytest.raises(data.IDXError, match="truncated: header declares 90 payload bytes, file has 89"):
        data.load_dataset(tmp_path)


# ---------------------------------------------------------------- data location


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    """The flag beats $JAXMLP_DATA_DIR, which beats $XDG_CACHE_HOME/jaxmlp/<dataset>, which beats
    ~/.cache/jaxmlp/<dataset>."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("JAXMLP_DATA_DIR", raising=False)
    assert data.resolve_data_dir(None) == tmp_path / "home" / ".cache" / "jaxmlp" / "mnist"
    assert data.resolve_data_dir(None, "kmnist") == tmp_path / "home" / ".cache" / "jaxmlp" / "kmnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir(None, "fashion-mnist") == tmp_path / "xdg" / "jaxmlp" / "fashion-mnist"
    monkeypatch.setenv("JAXMLP_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("JAXMLP_DATA_DIR")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.resolve_data_dir(None, "cifar")


def test_ensure_dataset_never_downloads_into_explicit_folders(tmp_path, monkeypatch):
    """An explicit folder (flag or $JAXMLP_DATA_DIR) lacking files is an error; nothing is fetched
    (a download attempt would fail the test) and nothing is written there."""
    def no_download(*args, **kwargs):
        raise AssertionError("download attempted into an explicit folder")
    monkeypatch.setattr(load, "download", no_download)  # what ensure_dataset calls
    monkeypatch.delenv("JAXMLP_DATA_DIR", raising=False)
    (tmp_path / "flag").mkdir()
    with pytest.raises(data.DataError, match="is empty"):
        data.ensure_dataset(tmp_path / "flag")
    monkeypatch.setenv("JAXMLP_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.ensure_dataset(None)
    with pytest.raises(data.DataError, match="`jaxmlp download --dataset kmnist --data-dir "):
        data.ensure_dataset(None, "kmnist")
    assert list((tmp_path / "flag").iterdir()) == [] and not (tmp_path / "env").exists()
    arrays = make_folder(tmp_path / "env")
    assert np.array_equal(data.ensure_dataset(None).x_train, arrays["train-images-idx3-ubyte"])


def test_registry_is_complete():
    """Each registered dataset has the four files in Dataset order, a checksum for each, at least one
    https mirror, and one class name per class."""
    assert {"mnist", "fashion-mnist", "kmnist"} <= set(data.DATASETS)
    for name, info in data.DATASETS.items():
        assert info.name == name
        assert [f.name for f in info.files] == [s + ".gz" for s in data.FILE_STEMS]
        for f in info.files:
            digests = [d for d in (f.content_sha256, f.gzip_sha256) if d is not None]
            assert digests and all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
        assert info.mirrors and all(m.startswith("https://") and not m.endswith("/") for m in info.mirrors)
        assert len(info.class_names) == info.num_classes


def test_bad_mirror_urls_and_datasets_are_refused(tmp_path):
    """A mirror that is not an http(s)/file URL, or an unknown dataset, is a ValueError before any
    folder is created."""
    with pytest.raises(data.DownloadError, match="ftp://example.org"):
        data.download("mnist", tmp_path / "x", mirrors=["ftp://example.org/mnist"])
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        data.download("cifar10", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- preprocessing


def test_normalize_matches_notebook_exactly():
    """normalize gives bit-for-bit the notebook's x.astype(float32) / 255.0 for every pixel value, in
    [0, 1]; the float64 mode is exactly those float32 values widened; also under jit."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 4, 4)
    notebook = pixels.astype(np.float32) / 255.0
    got32 = np.asarray(data.normalize(pixels))
    assert got32.dtype == np.float32 and np.array_equal(got32, notebook)
    assert got32.min() == 0.0 and got32.max() == 1.0
    with enable_x64(True):  # float64 only where asked for
        got64 = np.asarray(data.normalize(pixels, dtype=jnp.float64))
    assert got64.dtype == np.float64 and np.array_equal(got64, notebook.astype(np.float64))
    jitted = jax.jit(data.normalize, static_argnames="dtype")(jnp.asarray(pixels), dtype=jnp.float32)
    assert np.array_equal(np.asarray(jitted), notebook)


def test_flatten_matches_notebook_reshape():
    """flatten(images) == images.reshape(N, rows*cols), for numpy and jax inputs, and under jit."""
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for x in (images, jnp.asarray(images)):
        flat = np.asarray(data.flatten(x))
        assert flat.shape == (5, 784) and flat.dtype == np.uint8
        assert np.array_equal(flat, images.reshape(images.shape[0], 28 * 28))
    assert data.flatten(np.zeros((0, 3, 2), np.uint8)).shape == (0, 6)
    assert np.array_equal(np.asarray(jax.jit(data.flatten)(images)), images.reshape(5, 784))


@FAST
@given(images=st.sampled_from([np.uint8, np.float32]).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=3, max_dims=4, min_side=0, max_side=5))))
def test_flatten_gives_one_row_per_image(images):
    """(N, H, W) and (N, H, W, C) -> (N, H*W*C), same dtype: row i is image i's values in row-major order."""
    flat = np.asarray(data.flatten(images))
    n, rest = images.shape[0], images.shape[1:]
    assert flat.shape == (n, int(np.prod(rest))) and flat.dtype == images.dtype
    for i in range(n):
        assert same_array(flat[i], images[i].ravel())


@FAST
@given(shape=hnp.array_shapes(min_dims=0, max_dims=6, min_side=0, max_side=4).filter(lambda s: len(s) not in (3, 4)))
def test_flatten_refuses_what_is_not_a_batch_of_images(shape):
    """Any rank but 3 or 4 is one ValueError line that says what to do: a single image (28, 28), a flat
    image (784,) or an already flat batch (N, D) is not reshaped into something else silently."""
    with pytest.raises(ValueError) as info:
        data.flatten(np.zeros(shape, np.uint8))
    msg = str(info.value)
    assert "\n" not in msg and str(shape) in msg and "images[None]" in msg and "already flat" in msg


def test_flatten_reported_shapes():
    """The reported bug: (784,) became (784, 1) and one (28, 28) image stayed as it was; both now say
    what to pass instead, and images[None] is the fix the message names."""
    for shape in ((784,), (28, 28)):
        with pytest.raises(ValueError, match=r"images\[None\]"):
            data.flatten(np.zeros(shape, np.uint8))
    assert data.flatten(np.zeros((28, 28), np.uint8)[None]).shape == (1, 784)


def test_one_hot_matches_notebook_eye():
    """one_hot(y) equals the notebook's np.eye(num_classes)[y] (float64 there), shape (N, C), with the
    requested dtype; also under jit."""
    labels = np.array([7, 0, 9, 3, 3, 1], np.uint8)
    with enable_x64(True):
        got = np.asarray(data.one_hot(labels, dtype=jnp.float64))
    assert got.shape == (6, 10) and np.array_equal(got, np.eye(10)[labels])
    assert np.asarray(data.one_hot(labels)).dtype == np.float32
    assert np.array_equal(np.asarray(data.one_hot(labels, 12, jnp.float32)), np.eye(12, dtype=np.float32)[labels])
    jitted = jax.jit(data.one_hot, static_argnames=("num_classes", "dtype"))(jnp.asarray(labels))
    assert np.array_equal(np.asarray(jitted), np.eye(10)[labels])


@pytest.mark.realdata
def test_real_mnist_loads_and_preprocesses(mnist):
    """The real MNIST (conftest: $JAXMLP_DATA_DIR or ../shared/data/mnist) loads as 60000/10000 28x28
    uint8 images with labels 0-9, and preprocessing gives (N, 784) values in [0, 1] and one-hot rows."""
    ds = mnist
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert sorted(np.unique(ds.y_train).tolist()) == list(range(10))
    x = data.normalize(data.flatten(ds.x_test))
    assert x.shape == (10000, 784) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert np.array_equal(np.asarray(data.one_hot(ds.y_test)).argmax(1), ds.y_test)


def test_select_classes_filters_and_relabels_by_position():
    """select_classes keeps only the listed labels, in both splits, relabelled by their position in the
    list (images kept in order); bad lists are refused."""
    x_train = np.arange(8 * 4, dtype=np.uint8).reshape(8, 2, 2)
    y_train = np.array([0, 5, 9, 5, 2, 9, 7, 0], np.uint8)
    x_test = np.arange(4 * 4, dtype=np.uint8).reshape(4, 2, 2)
    y_test = np.array([9, 1, 5, 9], np.uint8)
    sub = data.select_classes(data.Dataset(x_train, y_train, x_test, y_test), [9, 5])
    assert sub.y_train.tolist() == [1, 0, 1, 0] and sub.y_test.tolist() == [0, 1, 0]
    assert np.array_equal(sub.x_train, x_train[[1, 2, 3, 5]])
    assert np.array_equal(sub.x_test, x_test[[0, 2, 3]]) and sub.y_train.dtype == np.uint8
    bad_lists = ([3], [5, 5], [5, -1], [5, 4], [5, 9.5], ["5", 9], 5)  # one class, repeated, negative,
    for bad in bad_lists:  # absent from training, not integers, not a list
        with pytest.raises(ValueError, match="^select_classes: classes: "):
            data.select_classes(data.Dataset(x_train, y_train, x_test, y_test), bad)


def test_select_classes_refuses_labels_that_do_not_fit_their_images():
    """Labels that are not one non-negative integer per image are one ValueError line naming the field;
    a huge label is filtered out without a lookup table as long as it (no huge allocation)."""
    x = np.zeros((4, 2, 2), np.uint8)
    good = np.array([0, 1, 2, 1], np.uint8)
    cases = {
        "data.y_train has 3 labels but data.x_train has 4 images": dict(y_train=good[:3]),
        r"data.y_test\[2\] is -1; labels must be >= 0": dict(y_test=np.array([0, 1, -1, 2], np.int8)),
        "data.y_train must be 1-D integer labels": dict(y_train=good.astype(np.float32)),
        r"data.y_test must be 1-D integer labels, got shape \(4, 1\)": dict(y_test=good[:, None]),
    }
    for match, change in cases.items():
        ds = data.Dataset(x, good, x, good)._replace(**change)
        with pytest.raises(ValueError, match=match) as info:
            data.select_classes(ds, [1, 2])
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="data must be a Dataset"):
        data.select_classes((x, good), [1, 2])
    huge = np.array([1, 2**62, 2, 0], np.int64)
    sub = data.select_classes(data.Dataset(x, good, x, huge), [2, 1])
    assert sub.y_test.tolist() == [1, 0] and sub.y_test.dtype == np.int64


# ---------------------------------------------------------------- read_images (predict's input)


@pytest.mark.parametrize("make, kind", [
    (lambda x: x, "pixels"),                                           # (N, 28, 28) uint8
    (lambda x: x.reshape(len(x), -1).astype(">i2"), "pixels"),         # (N, 784) big-endian int16
    (lambda x: np.asfortranarray(x.reshape(len(x), -1)), "pixels"),    # Fortran order
    (lambda x: (x / 255).astype(np.float32), "unit"),
    (lambda x: (x / 255).astype(">f8"), "unit"),
])
def test_read_images_npy_matches_numpy_load(tmp_path, make, kind):
    """.npy images of the accepted kinds come back as np.load gives them, flattened to (N, F): integer
    pixels as uint8 "pixels", floats in [0, 1] as "unit" with their values (native byte order)."""
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "x.npy"
    np.save(path, make(x))
    images, got_kind = data.read_images(path)
    want = np.load(path).reshape(5, -1)
    assert got_kind == kind and images.shape == (5, 784) and images.dtype.isnative
    assert np.array_equal(images, want.astype(np.uint8) if kind == "pixels" else want)


def test_read_images_idx_gzip_and_raw(tmp_path):
    """IDX images, gzip or raw, come back flattened as uint8 pixels."""
    x = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for name in ("x.idx", "x.idx.gz"):
        data.write_idx(tmp_path / name, x)
        images, kind = data.read_images(tmp_path / name)
        assert kind == "pixels" and np.array_equal(images, x.reshape(3, 784))


def _npy_with_header(path: Path, shape, descr="|u1", payload=b""):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(payload)


@pytest.mark.parametrize("how, fragment", [
    ("huge", "more than the 1073741824"),          # header declares 10^12 bytes: refused, nothing allocated
    ("short", "header declares 7840 data bytes, file has 100"),
    ("long", "header declares 784 data bytes, file has 785"),
    ("object", "pickle"),
    ("bool", "expected uint8 or float pixels"),
    ("rank", "expected images (N, 28, 28) or (N, 784)"),
    ("empty", "expected images"),
    ("range", "integer pixels must lie in 0..255"),
    ("nan", "float pixels must be finite"),
    ("garbage", "unreadable .npy file"),
    ("text", "neither a .npy array nor an IDX file"),
    ("labels", "expected images"),
])
def test_read_images_refuses_bad_files_in_one_line(tmp_path, how, fragment):
    """Each kind of unusable image file gives one DataError line naming the file and the problem."""
    path = tmp_path / f"{how}.npy"
    if how == "huge":
        _npy_with_header(path, (10**6, 10**6))
    elif how == "short":
        _npy_with_header(path, (10, 784), payload=bytes(100))
    elif how == "long":
        _npy_with_header(path, (1, 784), payload=bytes(785))
    elif how == "object":
        np.save(path, np.array([np.zeros(3), "x"], dtype=object), allow_pickle=True)
    else:
        arrays = {"bool": np.zeros((2, 784), bool), "rank": np.zeros(784, np.uint8),
                  "empty": np.zeros((0, 784), np.uint8), "range": np.full((2, 784), 256, np.int32),
                  "nan": np.full((2, 784), np.nan, np.float32)}
        if how in arrays:
            np.save(path, arrays[how])
        elif how == "labels":
            data.write_idx(path, np.zeros(10, np.uint8))
        else:
            path.write_bytes(b"\x93NUMPY garbage" * 5 if how == "garbage" else b"hello, no pixels\n")
    with pytest.raises(data.DataError) as info:
        data.read_images(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and fragment in msg


def test_read_images_and_read_idx_refuse_non_regular_files(tmp_path):
    """A folder, a FIFO with no writer and /dev/zero are refused at once (no read, no hang)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, Path("/dev/zero")):
        for reader, error in ((data.read_images, data.DataError), (data.read_idx, data.IDXError)):
            with pytest.raises(error, match="not a regular file") as info:
                reader(path)
            assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(data.DataError, match="no such file"):
        data.read_images(tmp_path / "missing.npy")


# ---------------------------------------------------------------- finding, verifying, identifying data


def _content_sha256(path: Path) -> str:
    raw = path.read_bytes()
    return hashlib.sha256(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).hexdigest()


def register(monkeypatch, name: str, folder: Path) -> None:
    """Register the synthetic dataset in folder under name, with its files' content checksums."""
    files = tuple(data.RemoteFile(f"{stem}.gz", _content_sha256(folder / f"{stem}.gz"))
                  for stem in data.FILE_STEMS)
    info = data.DATASETS["mnist"]._replace(name=name, files=files, mirrors=("https://example.invalid/x",))
    monkeypatch.setitem(data.DATASETS, name, info)


@pytest.fixture
def two_sets(tmp_path, monkeypatch):
    """Two registered synthetic datasets, "alpha" and "beta" (same shapes, other pixels), a cache in
    tmp_path/cache, no $JAXMLP_DATA_DIR, and a mirror URL serving each (file://)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXMLP_DATA_DIR", raising=False)
    sets = {}
    for seed, name in enumerate(("alpha", "beta")):
        folder = tmp_path / "mirror" / name
        sets[name] = make_folder(folder, seed=seed)
        register(monkeypatch, name, folder)
    sets["mirror"] = lambda name: (tmp_path / "mirror" / name).as_uri()
    sets["cache"] = lambda name: tmp_path / "cache" / "jaxmlp" / name
    return sets


def _dead_mirror() -> str:
    """A loopback URL nobody listens on: connection refused at once, no outside host contacted."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_load_dataset_without_path_downloads_into_the_cache_once(two_sets, monkeypatch):
    """load_dataset(dataset=...) with no path fills ($XDG_CACHE_HOME)/jaxmlp/DATASET from a mirror on
    first use and later loads from there with no download and no hashing (the stamp remembers)."""
    ds = data.load_dataset(dataset="alpha", mirrors=[two_sets["mirror"]("alpha")])
    assert np.array_equal(ds.x_train, two_sets["alpha"]["train-images-idx3-ubyte"])
    assert (two_sets["cache"]("alpha") / locate.STAMP).is_file()

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing changed, yet the data was downloaded or hashed again")
    monkeypatch.setattr(load, "download", forbidden)
    monkeypatch.setattr(verify, "compute_digests", forbidden)
    ds2 = data.load_dataset(dataset="alpha", mirrors=[_dead_mirror()])
    assert all(np.array_equal(a, b) for a, b in zip(ds, ds2))


def test_tampered_cache_file_is_fetched_again(two_sets):
    """A cache file changed into another valid IDX file (same size, mtime put back) no longer matches the
    registry and is replaced by a verified copy; offline, the error names the file and the fixes."""
    mirror = two_sets["mirror"]("alpha")
    data.load_dataset(dataset="alpha", mirrors=[mirror])
    path = two_sets["cache"]("alpha") / "t10k-labels-idx1-ubyte.gz"
    good, st = path.read_bytes(), path.stat()
    data.write_idx(path, (data.read_idx(path) + 1) % 10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.read_bytes() != good
    with pytest.raises(data.DownloadError) as info:
        data.load_dataset(dataset="alpha", mirrors=[_dead_mirror()])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path} does not match alpha's published checksum")
    assert "delete it and run `jaxmlp download --dataset alpha`" in msg and "--mirror URL" in msg
    ds = data.load_dataset(dataset="alpha", mirrors=[mirror])
    assert path.read_bytes() == good and np.array_equal(ds.y_test, two_sets["alpha"]["t10k-labels-idx1-ubyte"])


def test_verification_of_an_unchanged_mnist_cache_is_cheap(mnist_dir, tmp_path, monkeypatch):
    """With real MNIST in the cache, the first run hashes it once; after that, checking the four files
    takes well under 0.1 s (one small JSON read and four stats)."""
    cache = tmp_path / "jaxmlp" / "mnist"
    cache.mkdir(parents=True)
    for spec in data.DATASETS["mnist"].files:
        if not (mnist_dir / spec.name).is_file():
            pytest.skip(f"{mnist_dir} lacks {spec.name}")
        shutil.copy(mnist_dir / spec.name, cache / spec.name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    info = data.DATASETS["mnist"]
    load._fill_cache(cache, info, False, None, False)  # hashes and writes the stamp
    started = time.perf_counter()
    load._fill_cache(cache, info, False, None, False)
    assert time.perf_counter() - started < 0.1  # measured: about 1 ms


def test_offline_first_run_names_the_folder_and_the_ways_out(two_sets):
    """No data and no network: one line naming the cache folder it tried to fill and every way out
    (--data-dir, $JAXMLP_DATA_DIR, `jaxmlp download --mirror URL`, copying the four named files)."""
    folder = two_sets["cache"]("alpha")
    with pytest.raises(data.DataError) as info:
        data.load_dataset(dataset="alpha", mirrors=[_dead_mirror()])
    msg = str(info.value)
    assert "\n" not in msg and f"no alpha data in {folder}" in msg and "Connection refused" in msg
    for way in ("--data-dir DIR", "$JAXMLP_DATA_DIR", "--mirror URL", "jaxmlp download --dataset alpha",
                *(f"{stem}.gz" for stem in data.FILE_STEMS), f"into {folder}"):
        assert way in msg
    with pytest.raises(data.DataError, match="downloading is off"):
        data.load_dataset(dataset="alpha", download=False)


def test_missing_folder_messages_say_where_the_path_came_from(tmp_path, monkeypatch):
    """An empty --data-dir says the files are missing there with the ways out; a $JAXMLP_DATA_DIR that
    does not exist says the path came from the variable."""
    monkeypatch.delenv("JAXMLP_DATA_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError) as info:
        data.ensure_dataset(tmp_path / "empty")
    msg = str(info.value)
    assert "\n" not in msg and "missing there" in msg and "--mirror URL" in msg and "$JAXMLP_DATA_DIR" in msg
    assert "train-images-idx3-ubyte.gz" in msg
    monkeypatch.setenv("JAXMLP_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(data.DataError) as info:
        data.load_dataset()
    msg = str(info.value)
    assert f"{tmp_path / 'nope'} (from $JAXMLP_DATA_DIR) does not exist" in msg
    assert "unset $JAXMLP_DATA_DIR" in msg and "\n" not in msg


def test_another_datasets_files_are_refused(two_sets, tmp_path, monkeypatch):
    """A folder holding alpha's files, asked for as beta (by path or through $JAXMLP_DATA_DIR), is
    refused in one line; a $JAXMLP_DATA_DIR/beta/ subfolder is used when present; a folder of unknown
    data in the same layout is accepted; download refuses to overwrite alpha's files with beta's."""
    alpha = tmp_path / "mirror" / "alpha"
    for where in (alpha, None):
        monkeypatch.setenv("JAXMLP_DATA_DIR", str(alpha))
        with pytest.raises(data.DataError) as info:
            data.load_dataset(where, dataset="beta")
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{alpha} holds alpha's files, not beta's")
    assert np.array_equal(data.load_dataset(dataset="alpha").x_test, two_sets["alpha"]["t10k-images-idx3-ubyte"])

    root = tmp_path / "root"
    shutil.copytree(tmp_path / "mirror" / "beta", root / "beta")
    make_folder(root, seed=7)  # unknown data directly in the root
    monkeypatch.setenv("JAXMLP_DATA_DIR", str(root))
    assert data.resolve_data_dir(None, "beta") == root / "beta"
    assert data.resolve_data_dir(None, "alpha") == root
    assert np.array_equal(data.load_dataset(dataset="beta").y_train, two_sets["beta"]["train-labels-idx1-ubyte"])
    assert data.load_dataset(dataset="alpha").x_train.shape == (6, 5, 3)  # unknown contents: accepted

    with pytest.raises(data.DownloadError, match="holds alpha's files; download beta into another folder"):
        data.download("beta", alpha, mirrors=[two_sets["mirror"]("beta")])
    assert _content_sha256(alpha / "t10k-labels-idx1-ubyte.gz") == data.DATASETS["alpha"].files[3].content_sha256


@pytest.mark.realdata
def test_mnist_asked_for_as_fashion_mnist_is_refused(mnist_dir, tmp_path, monkeypatch):
    """Real MNIST given as Fashion-MNIST: refused, naming both; the hashes are remembered in the
    cache's stamps folder, and nothing is written into the data folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("JAXMLP_DATA_DIR", str(mnist_dir))
    with pytest.raises(data.DataError, match="holds MNIST's files, not Fashion-MNIST's"):
        data.ensure_dataset(None, "fashion-mnist")
    assert data.ensure_dataset(None, "mnist").x_train.shape == (60000, 28, 28)
    assert len(list((tmp_path / "jaxmlp" / "stamps").glob("*.json"))) == 1
    assert not (mnist_dir / locate.STAMP).exists()


def test_cache_holding_another_datasets_files_is_refilled(two_sets):
    """The cache is ours: alpha's cache folder holding beta's files gets alpha's, downloaded again; with
    no network the error says whose files are there."""
    shutil.copytree(two_sets["mirror"]("beta").removeprefix("file://"), two_sets["cache"]("alpha"))
    with pytest.raises(data.DownloadError, match=r"does not match alpha's published checksum \(it is beta's\)"):
        data.load_dataset(dataset="alpha", mirrors=[_dead_mirror()])
    ds = data.load_dataset(dataset="alpha", mirrors=[two_sets["mirror"]("alpha")])
    assert np.array_equal(ds.x_train, two_sets["alpha"]["train-images-idx3-ubyte"])


# ---------------------------------------------------------------- what mutation testing found unpinned
# (docs/mutation.md): the reader's messages in full (their numbers were never read), its boundaries, and
# reading a stream that returns less than asked.


def _idx_error(raw: bytes, name: str | None = None) -> str:
    with pytest.raises(data.IDXError) as err:
        data.parse_idx(raw) if name is None else data.parse_idx(raw, name)
    return str(err.value)


def test_every_reader_message_in_full():
    """Each refusal names the bytes ("<bytes>" unless named) and gives the right numbers."""
    ok = encode_idx(np.arange(6, dtype=np.uint8))
    assert _idx_error(b"\x01\x02" + ok[2:]) == "<bytes>: not an IDX file: magic starts with 01 02, expected 00 00"
    assert _idx_error(b"\x00\x00\x07\x01" + ok[4:], "f") == (
        "f: unknown IDX type code 0x07 (known: 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)")
    assert _idx_error(b"\x00\x00\x08\x03" + b"\x00" * 5, "f") == (
        "f: truncated: header declares 3 dimensions (16 header bytes), file has 9 bytes")
    assert _idx_error(ok + b"\x00\x00", "f") == (
        "f: 2 unexpected bytes after the payload (header declares 6 payload bytes, file has 8)")
    assert _idx_error(ok[:-2], "f") == "f: truncated: header declares 6 payload bytes, file has 4"
    packed = gzip.compress(ok + b"\x00", mtime=0)
    assert _idx_error(packed, "f") == ("f: unexpected bytes after the payload (header declares 6 payload bytes, "
                                       "the decompressed data holds more)")
    assert _idx_error(gzip.compress(ok[:-2], mtime=0), "f") == (
        "f: truncated: header declares 6 payload bytes, file has 4")
    huge = struct.pack(">BBBB", 0, 0, 0x08, 4) + struct.pack(">4I", *[2**32 - 1] * 4)
    assert _idx_error(huge, "f") == (f"f: header declares about 10^38 payload bytes, more than the {1 << 30} "
                                     "jaxmlp reads (jaxmlp.data.idx.MAX_ARRAY_BYTES)")
    tiny_gz = gzip.compress(struct.pack(">BBBBI", 0, 0, 0x08, 1, 10**6), mtime=0)
    assert _idx_error(tiny_gz, "f") == (f"f: truncated: header declares {10**6} payload bytes, more than "
                                        f"{len(tiny_gz)} bytes of gzip data can hold")
    deep = struct.pack(">BBBB", 0, 0, 0x08, 70) + struct.pack(">70I", *[1] * 70) + b"\x00"
    assert _idx_error(deep, "f") == "f: header declares 70 dimensions, more than NumPy supports"


def test_size_text_switches_to_a_power_of_ten_at_10_to_the_15():
    assert data.idx.size_text(12) == "12"
    assert data.idx.size_text(10**15 - 1) == "999999999999999"
    assert data.idx.size_text(10**15) == "about 10^15"
    assert data.idx.size_text(3 * 10**20) == "about 10^20"


def test_payload_limits_are_inclusive(monkeypatch):
    """A payload of exactly MAX_ARRAY_BYTES is read, one byte more is refused; gzip data of S bytes may
    declare exactly 1032 * S bytes (deflate's ratio)."""
    idx = data.idx
    monkeypatch.setattr(idx, "MAX_ARRAY_BYTES", 6)
    assert data.parse_idx(encode_idx(np.arange(6, dtype=np.uint8))).shape == (6,)
    assert "more than the 6 jaxmlp reads" in _idx_error(encode_idx(np.arange(7, dtype=np.uint8)))
    monkeypatch.undo()
    idx._check_declared("f", 1032 * 50, 50, 5, gz=True)  # at the ratio: allowed
    with pytest.raises(data.IDXError, match="gzip data can hold"):
        idx._check_declared("f", 1032 * 50 + 1, 50, 5, gz=True)


class _Trickle:
    """A binary stream that hands out at most 3 bytes a read (a pipe, a slow socket) and records reads."""

    def __init__(self, raw: bytes):
        self.raw, self.pos, self.asked = raw, 0, []

    def read(self, n=-1):
        self.asked.append(n)
        n = len(self.raw) - self.pos if n is None or n < 0 else min(n, 3)
        out = self.raw[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def test_read_upto_gathers_short_reads_and_never_asks_past_n():
    """read_upto(stream, n) joins short reads into exactly n bytes (fewer only at the end), asking only
    for what is still missing."""
    stream = _Trickle(bytes(range(10)))
    assert data.idx.read_upto(stream, 8) == bytes(range(8))
    assert stream.asked == [8, 5, 2] and stream.pos == 8
    assert data.idx.read_upto(stream, 8) == bytes([8, 9])
    assert data.idx.read_upto(_Trickle(b""), 4) == b""


def test_the_end_check_reads_one_byte(tmp_path):
    """After the payload the reader asks for exactly one more byte (so trailing junk of any size costs one
    byte of memory), on a raw file as on gzip."""
    raw = encode_idx(np.arange(6, dtype=np.uint8)) + b"\x00" * 100

    class Recording(io.BytesIO):
        asked: list = []

        def read(self, n=-1):
            Recording.asked.append(n)
            return super().read(n)

    with pytest.raises(data.IDXError, match="unexpected bytes"):
        data.idx.read_idx_from(Recording(raw), "f", len(raw) - 100)
    assert Recording.asked[-1] == 1


def test_open_file_messages(tmp_path):
    """A path that cannot be opened for a reason other than absence gives the OS reason in words (a
    file used as a folder: "Not a directory", which even root gets)."""
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(data.IDXError, match=r"plain/x.idx: cannot read: Not a directory$"):
        data.read_idx(tmp_path / "plain" / "x.idx")


def test_fifo_is_named_in_capitals(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(data.IDXError, match=r"pipe: is a device, FIFO or socket, not a regular file$"):
        data.read_idx(fifo)


def test_write_idx_limits_and_message(tmp_path):
    """Dimensions up to 2**32 - 1 are written (a zero-size array makes that cheap); 2**32 is refused; an
    unsupported dtype's message lists the six supported ones."""
    data.write_idx(tmp_path / "a.idx", np.zeros((2**32 - 1, 0), np.uint8))
    assert data.read_idx(tmp_path / "a.idx").shape == (2**32 - 1, 0)
    with pytest.raises(ValueError, match=r"dimensions must be below 2\*\*32"):
        data.write_idx(tmp_path / "b.idx", np.zeros((2**32, 0), np.uint8))
    with pytest.raises(ValueError) as err:
        data.write_idx(tmp_path / "c.idx", np.zeros(3, np.uint64))
    assert str(err.value).endswith("IDX cannot store dtype uint64 (supported: uint8, int8, int16, int32, float32, "
                                   "float64)")
