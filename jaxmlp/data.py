"""Datasets in MNIST's IDX layout: parse, locate, download, verify, preprocess.

The IDX format (LeCun's): two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension and the values, big-endian, row-major. Files may be gzip-compressed.

Reading is bounded: the header is read first, a payload larger than MAX_ARRAY_BYTES (or larger than a raw
file holds, or than its gzip data could inflate to) is refused before anything is allocated, and the
payload is decompressed into one array of exactly the declared size, never past it plus one byte. So
peak memory is about the largest array accepted, whatever the file claims or inflates to.

Where a dataset's four files live (first match wins):
  1. the folder given (``--data-dir DIR``, ``data_dir=``): exactly that folder;
  2. ``$JAXMLP_DATA_DIR``: its subfolder named after the dataset (``$JAXMLP_DATA_DIR/fashion-mnist/``)
     when that exists, else the variable's folder itself. So one variable can serve several datasets
     (one subfolder each) or name one dataset's folder directly;
  3. the cache ``($XDG_CACHE_HOME or ~/.cache)/jaxmlp/DATASET``, downloaded there on first use.
Files in the cache must match the registry's SHA-256s (a file that does not is downloaded again). A folder
of the first two kinds may hold any data in MNIST's layout, but one holding another registered dataset's
files is refused (MNIST's files asked for as Fashion-MNIST). Hashes are computed once per file and
remembered in a small JSON stamp keyed by size, mtime and ctime, so a run in which nothing changed reads
one small file instead of hashing the data. The stamp lies beside the files in the cache
(``.jaxmlp-sha256.json``) and, for any other folder, which is never written to, in the cache's
``jaxmlp/stamps/`` under a hash of the folder's path.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import math
import os
import stat
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxmlp.fileio import remove_stale_temps, temp_path, write_json
from jaxmlp.progress import Progress


class DataError(ValueError):
    """A dataset folder or file that cannot be used (missing, malformed, inconsistent)."""


class IDXError(DataError):
    """An IDX file that cannot be parsed; the message names the file and what is wrong."""


class DownloadError(DataError):
    """Every mirror failed for some file; the message names each mirror and its failure."""


# ---------------------------------------------------------------- IDX files

# Type code -> on-disk (big-endian) dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"

# The most bytes one array read from a file (IDX payload or .npy data) may hold: 1 GiB. Real IDX datasets
# fit with room to spare (MNIST's training images are 47 MB, EMNIST ByClass's 0.55 GB); a header that
# declares more is refused before anything is allocated.
MAX_ARRAY_BYTES = 1 << 30
# Deflate turns one input byte into at most ~1032 output bytes: gzip data of S bytes cannot hold more.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20


def _size(n: int) -> str:
    """A byte count for a message; products of 255 declared dimensions can have thousands of digits."""
    return str(n) if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def _read_upto(stream: io.BufferedIOBase, n: int) -> bytes:
    """Up to n bytes, fewer only at the end of the stream."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_into(stream: io.BufferedIOBase, buf: np.ndarray) -> int:
    """Fill the 1-D uint8 array buf from stream in bounded pieces; return the bytes read."""
    view, got = buf.data, 0  # buf.data: a memoryview of buf
    while got < len(view):
        n = stream.readinto(view[got:got + _CHUNK])
        if not n:
            break
        got += n
    return got


def _idx_header(stream: io.BufferedIOBase, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and check an IDX header: (on-disk dtype, shape, header bytes)."""
    head = _read_upto(stream, 4)
    if len(head) < 4:
        raise IDXError(f"{name}: truncated: {len(head)} bytes, an IDX header needs at least 4")
    if head[0] != 0 or head[1] != 0:
        raise IDXError(f"{name}: not an IDX file: magic starts with {head[:2].hex(' ')}, expected 00 00")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXError(f"{name}: header declares 0 dimensions (need at least 1)")
    dims = _read_upto(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise IDXError(f"{name}: truncated: header declares {ndim} dimensions ({4 + 4 * ndim} header "
                       f"bytes), file has {4 + len(dims)} bytes")
    return IDX_DTYPES[code], struct.unpack(f">{ndim}I", dims), 4 + 4 * ndim


def _check_declared(name: str, expected: int, size: int, header: int, gz: bool) -> None:
    """IDXError unless a payload of `expected` bytes is allowed and fits a file of `size` bytes."""
    if expected > MAX_ARRAY_BYTES:
        raise IDXError(f"{name}: header declares {_size(expected)} payload bytes, more than the "
                       f"{MAX_ARRAY_BYTES} jaxmlp reads (jaxmlp.data.MAX_ARRAY_BYTES)")
    got = size - header
    if gz:
        if expected > _DEFLATE_MAX_RATIO * size:
            raise IDXError(f"{name}: truncated: header declares {expected} payload bytes, more than "
                           f"{size} bytes of gzip data can hold")
    elif got < expected:
        raise IDXError(f"{name}: truncated: header declares {expected} payload bytes, file has {got}")
    elif got > expected:
        raise IDXError(f"{name}: {got - expected} unexpected bytes after the payload "
                       f"(header declares {expected} payload bytes, file has {got})")


def _read_idx_from(f: io.BufferedIOBase, name: str, size: int) -> np.ndarray:
    """The array in the IDX file open as f (at offset 0, `size` bytes, gzip or raw), native-endian."""
    gz = _read_upto(f, 2) == _GZIP_MAGIC
    f.seek(0)
    stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
    try:
        dtype, shape, header = _idx_header(stream, name)
        expected = math.prod(shape) * dtype.itemsize  # Python ints: may exceed int64
        _check_declared(name, expected, size, header, gz)
        values = np.empty(expected // dtype.itemsize, dtype)
        got = _read_into(stream, values.view(np.uint8))
        extra = stream.read(1) if got == expected else b""  # for gzip, also checks the CRC and length
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        # EOFError: stream cut short; BadGzipFile / zlib.error: corrupt bytes, CRC or trailing junk.
        raise IDXError(f"{name}: corrupt or truncated gzip data ({err})") from None
    except OSError as err:
        raise IDXError(f"{name}: cannot read: {err.strerror or err}") from None
    if got < expected:
        raise IDXError(f"{name}: truncated: header declares {expected} payload bytes, file has {got}")
    if extra:
        raise IDXError(f"{name}: unexpected bytes after the payload (header declares {expected} payload "
                       f"bytes, the decompressed data holds more)")
    values = values.byteswap(inplace=True) if not dtype.isnative else values
    try:
        return values.view(dtype.newbyteorder("=")).reshape(shape)
    except ValueError:  # more dimensions than NumPy supports
        raise IDXError(f"{name}: header declares {len(shape)} dimensions, more than NumPy "
                       f"supports") from None


def _open_file(path: str | os.PathLike, error: type[DataError]) -> tuple[io.BufferedIOBase, int]:
    """(binary file, size) for a regular file; `error` naming the path for anything else, so a folder,
    a FIFO or a device such as /dev/zero is refused before any read (O_NONBLOCK: a FIFO without a
    writer must not block the open)."""
    name = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except OSError as err:
        raise error(f"{name}: cannot read: {err.strerror or err}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
        raise error(f"{name}: is {what}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), info.st_size


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (gzip or raw) into a native-endian array; IDXError if malformed."""
    return _read_idx_from(io.BytesIO(raw), name, len(raw))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip (detected by its magic bytes) or raw, as a native-endian array.

    Streams from the file with bounded memory (see MAX_ARRAY_BYTES). Raises IDXError (a ValueError)
    naming the file for anything malformed, oversized, unreadable or not a regular file.
    """
    f, size = _open_file(path, IDXError)
    with f:
        return _read_idx_from(f, os.fspath(path), size)


def write_idx(path: str | os.PathLike, array) -> None:
    """Write an array (1 to 255 dims, one of the six IDX dtypes) as IDX; gzip if path ends in .gz."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        names = ", ".join(str(dt.newbyteorder("=")) for dt in IDX_DTYPES.values())
        raise ValueError(f"{os.fspath(path)}: IDX cannot store dtype {array.dtype} (supported: {names})")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"{os.fspath(path)}: IDX stores 1 to 255 dimensions, array has {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"{os.fspath(path)}: IDX dimensions must be below 2**32, got {array.shape}")
    code = codes[dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    raw = header + payload
    if os.fspath(path).endswith(".gz"):
        raw = gzip.compress(raw, mtime=0)  # mtime=0: same array, same bytes
    Path(path).write_bytes(raw)


# ---------------------------------------------------------------- image files (predict's input)


def _npy_header(f: io.BufferedIOBase, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except Exception as err:  # NumPy's header parsing raises ValueError, SyntaxError, TokenError, ...
        msg = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{name}: unreadable .npy file ({msg})") from None


def _read_npy(f: io.BufferedIOBase, name: str, size: int) -> np.ndarray:
    """The array in the .npy file open as f, read only after its header has been checked: no pickles,
    images' rank and dtype, at most MAX_ARRAY_BYTES, exactly what the file holds."""
    shape, fortran, dtype = _npy_header(f, name)
    if dtype.hasobject:
        raise DataError(f"{name}: unreadable .npy file (object arrays need pickle, which is refused)")
    if len(shape) not in (2, 3) or math.prod(shape) == 0:
        raise DataError(f"{name}: expected images (N, 28, 28) or (N, 784), got shape {shape}")
    if dtype.kind not in "uif" or dtype.fields is not None:
        raise DataError(f"{name}: expected uint8 or float pixels, got dtype {dtype}")
    nbytes, have = math.prod(shape) * dtype.itemsize, size - f.tell()
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{name}: .npy header declares {_size(nbytes)} bytes, more than the "
                        f"{MAX_ARRAY_BYTES} jaxmlp reads (jaxmlp.data.MAX_ARRAY_BYTES)")
    if have != nbytes:
        raise DataError(f"{name}: unreadable .npy file (header declares {nbytes} data bytes, file has {have})")
    values = np.empty(math.prod(shape), dtype)
    try:
        got = _read_into(f, values.view(np.uint8))
    except OSError as err:
        raise DataError(f"{name}: cannot read: {err.strerror or err}") from None
    if got != nbytes:
        raise DataError(f"{name}: unreadable .npy file (truncated: {got} of {nbytes} data bytes)")
    values = values.reshape(shape, order="F" if fortran else "C")
    return values.astype(dtype.newbyteorder("="), copy=False)


def _as_pixels(images: np.ndarray, name: str) -> tuple[np.ndarray, str]:
    if images.ndim not in (2, 3) or images.size == 0:
        raise DataError(f"{name}: expected images (N, 28, 28) or (N, 784), got shape {images.shape}")
    images = images.reshape(images.shape[0], -1)
    if images.dtype.kind in "ui":
        if images.min() < 0 or images.max() > 255:
            raise DataError(f"{name}: integer pixels must lie in 0..255, got {images.min()}..{images.max()}")
        return images.astype(np.uint8, copy=False), "pixels"
    if images.dtype.kind == "f":
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{name}: float pixels must be finite and lie in [0, 1] (pixel / 255), "
                            f"got {images.min()}..{images.max()}")
        return images, "unit"
    raise DataError(f"{name}: expected uint8 or float pixels, got dtype {images.dtype}")


def read_images(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Images from an IDX (gzip or raw) or .npy file as ``(array (N, F), kind)``.

    kind "pixels": uint8 values 0..255 (integer inputs); kind "unit": float values in [0, 1] (pixel / 255),
    dtype as stored. Accepts (N, rows, cols) and (N, F) arrays. Reads are bounded (MAX_ARRAY_BYTES, the
    file's size; pickled .npy arrays and non-regular files are refused). DataError (a ValueError)
    naming the file for anything else.
    """
    name = os.fspath(path)
    f, size = _open_file(path, DataError)
    with f:
        try:
            magic = _read_upto(f, len(_NPY_MAGIC))
            f.seek(0)
        except OSError as err:
            raise DataError(f"{name}: cannot read: {err.strerror or err}") from None
        if magic == _NPY_MAGIC:
            images = _read_npy(f, name, size)
        elif magic[:2] in (b"\x00\x00", _GZIP_MAGIC):
            images = _read_idx_from(f, name, size)  # IDXError names the file
        else:
            raise DataError(f"{name}: neither a .npy array nor an IDX file (gzip or raw)")
    return _as_pixels(images, name)


# ---------------------------------------------------------------- dataset registry


class RemoteFile(NamedTuple):
    """One file as the mirrors serve it, and how to check it.

    content_sha256: SHA-256 of the decompressed IDX bytes (mirrors may re-compress, so the .gz bytes
    can differ between them). gzip_sha256: SHA-256 of the .gz bytes as served, for datasets whose
    decompressed contents have no established checksum. At least one is set; every one set is checked.
    """
    name: str
    content_sha256: str | None = None
    gzip_sha256: str | None = None


class DatasetInfo(NamedTuple):
    name: str
    files: tuple[RemoteFile, RemoteFile, RemoteFile, RemoteFile]  # train images, train labels, test images, test labels
    mirrors: tuple[str, ...]  # base URLs, tried in order; file URL = base + "/" + file name
    num_classes: int
    class_names: tuple[str, ...]
    homepage: str
    license: str


# The four file stems, in Dataset order.
FILE_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DATASETS: dict[str, DatasetInfo] = {
    # Content checksums: the table in the MNIST distribution's README (the decompressed files are the
    # original ones, whose published MD5s that table also lists).
    "mnist": DatasetInfo(
        name="mnist",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz",
                       "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            RemoteFile("train-labels-idx1-ubyte.gz",
                       "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            RemoteFile("t10k-images-idx3-ubyte.gz",
                       "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            RemoteFile("t10k-labels-idx1-ubyte.gz",
                       "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        ),
        mirrors=("https://storage.googleapis.com/cvdf-datasets/mnist",
                 "https://ossci-datasets.s3.amazonaws.com/mnist"),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        homepage="http://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0",
    ),
    # Content checksums computed from Debian's dataset-fashion-mnist package
    # (0.0~git20200523.55506a9-1). Debian re-compressed the .gz files, so their bytes do not match
    # Zalando's published .gz MD5s, but the decompressed MD5s (f4a8712d..., 9018921c..., 8181f547...,
    # 15d48437...) equal the raw-file MD5s other projects derive from the published archives.
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz",
                       "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            RemoteFile("train-labels-idx1-ubyte.gz",
                       "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            RemoteFile("t10k-images-idx3-ubyte.gz",
                       "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            RemoteFile("t10k-labels-idx1-ubyte.gz",
                       "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ),
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
                 "https://storage.googleapis.com/tensorflow/tf-keras-datasets"),
        num_classes=10,
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        license="MIT",
    ),
    # KMNIST has one official host (CODH), which publishes no checksums, and we had no copy of its
    # files to hash their decompressed contents. So these are SHA-256s of the .gz bytes as that host
    # serves them, as listed identically by torchvision's prototype datasets and by torchvision-ruby
    # (torchvision's KMNIST class lists MD5s bdb82020..., e144d726..., 5c965bf0..., 7320c461... for
    # the same names). Checking compressed bytes works only because there is a single source: a
    # re-compressed copy (e.g. given with --mirror) is rejected. Replace with content SHA-256s
    # computed from a verified download when one is available.
    "kmnist": DatasetInfo(
        name="kmnist",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", gzip_sha256=(
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4")),
            RemoteFile("train-labels-idx1-ubyte.gz", gzip_sha256=(
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17")),
            RemoteFile("t10k-images-idx3-ubyte.gz", gzip_sha256=(
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5")),
            RemoteFile("t10k-labels-idx1-ubyte.gz", gzip_sha256=(
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c")),
        ),
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist",),
        num_classes=10,
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        homepage="https://github.com/rois-codh/kmnist",
        license="CC BY-SA 4.0",
    ),
}


def _dataset_info(dataset: str) -> DatasetInfo:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})") from None


# ---------------------------------------------------------------- loading


class Dataset(NamedTuple):
    """uint8 arrays: images (N, rows, cols), labels (N,)."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def check_classes(classes: Sequence[int]) -> list[int]:
    """``classes`` as ints; ValueError naming --classes unless two or more distinct labels >= 0."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or len(classes) < 2 or min(classes) < 0:
        raise ValueError(f"--classes: need two or more distinct non-negative labels, got {classes}")
    return classes


def select_classes(data: Dataset, classes: Sequence[int]) -> Dataset:
    """Only the examples labelled one of ``classes``, relabelled by position: with classes (5, 6, 7, 8, 9)
    a 5 becomes 0 and a 9 becomes 4. A smaller task, e.g. for fine-tuning a model on a digit subset."""
    classes = check_classes(classes)
    table = np.full(max(int(data.y_train.max()), int(data.y_test.max()), *classes) + 1, -1, np.int64)
    table[classes] = np.arange(len(classes))
    parts = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        keep = table[y] >= 0
        parts += [x[keep], table[y[keep]].astype(y.dtype)]
    missing = [c for c in classes if not (data.y_train == c).any()]
    if missing:
        raise ValueError(f"--classes: no training example is labelled {missing[0]}")
    return Dataset(*parts)


_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "kmnist": "KMNIST"}


def _title(dataset: str) -> str:
    return _TITLES.get(dataset, dataset)


def _candidates(folder: Path, stem: str) -> list[Path]:
    # The notebook names them train-images.idx3-ubyte; the distribution train-images-idx3-ubyte.gz.
    prefix, _, rest = stem.rpartition("-idx")
    dotted = f"{prefix}.idx{rest}"
    return [folder / f"{stem}.gz", folder / stem, folder / f"{dotted}.gz", folder / dotted]


def _find(folder: Path, stem: str) -> Path | None:
    return next((p for p in _candidates(folder, stem) if p.is_file()), None)


def _ways_out(folder: Path, dataset: str, source: str | None) -> str:
    """The fixes for a folder lacking files, for the end of a one-line message."""
    flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    names = ", ".join(f"{stem}.gz" for stem in FILE_STEMS)
    if source is None:  # the cache: its files come from the network
        return (f"fetch them from a mirror you can reach with `jaxmlp download{flag} --mirror URL`, copy "
                f"{names} into {folder}, or use a folder holding them with --data-dir DIR or $JAXMLP_DATA_DIR")
    unset = "; or unset $JAXMLP_DATA_DIR to use the cache" if source == "$JAXMLP_DATA_DIR" else ""
    return (f"run `jaxmlp download{flag} --data-dir {folder}` to fetch them (add --mirror URL for another "
            f"source), copy {names} there, or give another folder with --data-dir DIR or "
            f"$JAXMLP_DATA_DIR{unset}")


def _find_all(folder: Path, dataset: str = "mnist", source: str | None = "--data-dir") -> list[Path]:
    """The four files' paths in Dataset order; one-line DataError (naming the folder, where its path
    came from, and the ways out) if any is missing."""
    where = f"data folder {folder}" + (" (from $JAXMLP_DATA_DIR)" if source == "$JAXMLP_DATA_DIR" else "")
    hint = _ways_out(folder, dataset, source)
    if not folder.exists():
        raise DataError(f"{where} does not exist; {hint}")
    if not folder.is_dir():
        raise DataError(f"{where} is not a folder; {hint}")
    if not any(p.name != _STAMP for p in folder.iterdir()):
        raise DataError(f"{where} is empty: {_title(dataset)}'s four files are missing there; {hint}")
    paths = [_find(folder, stem) for stem in FILE_STEMS]
    missing = [stem for stem, p in zip(FILE_STEMS, paths) if p is None]
    if missing:
        raise DataError(f"{where} has no {', '.join(missing)} (.gz or uncompressed); {hint}")
    return [p for p in paths if p is not None]  # none is: missing is empty


def _load_paths(paths: Sequence[Path], num_classes: int) -> Dataset:
    """The four IDX files as a Dataset, checked to form one (uint8, ranks, counts, label range)."""
    if not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= 256:
        raise DataError(f"num_classes must be an integer in [1, 256] for uint8 labels, got {num_classes!r}")
    arrays = [read_idx(p) for p in paths]
    for path, array, want in zip(paths, arrays, (3, 1, 3, 1)):
        if array.dtype != np.uint8 or array.ndim != want:
            kind = "images" if want == 3 else "labels"
            raise DataError(f"{path}: expected {want}-D uint8 {kind}, got {array.ndim}-D {array.dtype} "
                            f"with shape {array.shape}")
    x_train, y_train, x_test, y_test = arrays
    for images, labels, ipath, lpath in ((x_train, y_train, paths[0], paths[1]),
                                         (x_test, y_test, paths[2], paths[3])):
        if len(images) != len(labels):
            raise DataError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels")
        if labels.size and int(labels.max()) >= num_classes:
            bad = int(np.argmax(labels >= num_classes))
            raise DataError(f"{lpath}: label {int(labels[bad])} at index {bad} is outside "
                            f"[0, {num_classes})")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"image shapes differ: {paths[0]} has {x_train.shape[1:]}, "
                        f"{paths[2]} has {x_test.shape[1:]}")
    return Dataset(x_train, y_train, x_test, y_test)


def load_dataset(data_dir: str | os.PathLike | None = None, num_classes: int | None = None, *,
                 dataset: str | None = None, download: bool = True,
                 mirrors: Sequence[str] | None = None, progress: bool = False) -> Dataset:
    """Load a dataset's four MNIST-layout IDX files and check they form a dataset.

    ``load_dataset(folder)`` (no ``dataset``) loads exactly that folder, whatever it holds. Otherwise the
    folder is found as the CLI finds it (see the module docstring): ``data_dir``, else
    ``$JAXMLP_DATA_DIR`` (its ``DATASET/`` subfolder if present), else the cache, downloaded there on
    first use unless ``download=False``; ``dataset`` defaults to "mnist" and a folder holding another
    registered dataset's files is refused. num_classes defaults to the dataset's (10).

    Returns uint8 images (N, rows, cols) and labels (N,) in [0, num_classes). DataError/IDXError
    (ValueErrors, one line) name the folder or file for anything missing, malformed or inconsistent.
    """
    if data_dir is not None and os.fspath(data_dir) != "" and dataset is None:
        paths = _find_all(Path(data_dir).expanduser())
        return _load_paths(paths, 10 if num_classes is None else num_classes)
    return _ensure(data_dir, dataset or "mnist", num_classes, download, mirrors, progress)


# ---------------------------------------------------------------- where the data lives


def _locate(data_dir: str | os.PathLike | None, dataset: str) -> tuple[Path, str | None]:
    """(folder, where its path came from: "--data-dir", "$JAXMLP_DATA_DIR", or None for the cache)."""
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser(), "--data-dir"
    _dataset_info(dataset)  # the name becomes a folder: only registry names
    env = os.environ.get("JAXMLP_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        return (root / dataset if (root / dataset).is_dir() else root), "$JAXMLP_DATA_DIR"
    return _cache_root() / dataset, None


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "jaxmlp"


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str = "mnist") -> Path:
    """The data folder: data_dir if given, else $JAXMLP_DATA_DIR (its subfolder named ``dataset`` when
    that exists, else the variable's folder), else the cache ($XDG_CACHE_HOME or ~/.cache)/jaxmlp/<dataset>."""
    return _locate(data_dir, dataset)[0]


_STAMP = ".jaxmlp-sha256.json"


def _stamp_path(folder: Path) -> Path:
    """Beside the files in our own cache folder; for any other folder (never written to) under the
    cache's stamps/, named by a hash of the folder's real path."""
    if folder.parent == _cache_root():
        return folder / _STAMP
    key = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:24]
    return _cache_root() / "stamps" / f"{key}.json"


def _read_stamps(folder: Path) -> dict:
    try:
        with open(_stamp_path(folder), encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def _write_stamps(folder: Path, entries: dict) -> None:
    try:
        write_json(_stamp_path(folder), entries)
    except OSError:  # a read-only cache: hash again next time
        pass


def _file_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sha256_of_contents(path: Path) -> str:
    """SHA-256 of the file's decompressed bytes (the bytes themselves if it is not gzip); "" when they
    exceed any array we read (no registered file is that large: a gzip bomb is not inflated to the end)."""
    digest, total = hashlib.sha256(), 0
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
            total += len(chunk)
            if total > MAX_ARRAY_BYTES + 4 + 4 * 255:
                return ""
    return digest.hexdigest()


def _sha256_of_bytes(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _compute_digests(path: Path) -> dict:
    """{"sha256": of the bytes, "content_sha256": of the decompressed bytes, None if the gzip is corrupt}."""
    raw = _sha256_of_bytes(path)
    try:
        content = _sha256_of_contents(path)
    except (gzip.BadGzipFile, EOFError, zlib.error):
        content = None
    return {"sha256": raw, "content_sha256": content}


def _digests(paths: Sequence[Path]) -> list[dict]:
    """_compute_digests of files in one folder, each remembered in the stamp while its size, mtime and
    ctime stay the same (stat before hashing: a file changed meanwhile is hashed again next time)."""
    folder = paths[0].parent
    stamps, changed, out = _read_stamps(folder), False, []
    for path in paths:
        key = _file_key(path)
        entry = stamps.get(path.name)
        if entry is None or entry.get("key") != key:
            entry = stamps[path.name] = {"key": key, **_compute_digests(path)}
            changed = True
        out.append(entry)
    if changed:
        _write_stamps(folder, stamps)
    return out


def _remember(path: Path, digests: dict) -> None:
    stamps = _read_stamps(path.parent)
    stamps[path.name] = {"key": _file_key(path), **digests}
    _write_stamps(path.parent, stamps)


def _mismatch(digests: dict, spec: RemoteFile) -> str | None:
    """None if the digests match every checksum spec has, else the reason they do not."""
    if spec.gzip_sha256 is not None and digests.get("sha256") != spec.gzip_sha256:
        return "checksum mismatch"
    if spec.content_sha256 is not None:
        if digests.get("content_sha256") is None:
            return "corrupt gzip data"
        if digests["content_sha256"] != spec.content_sha256:
            return "checksum mismatch"
    return None


def _verified(path: Path, spec: RemoteFile) -> bool:
    try:
        return path.is_file() and _mismatch(_digests([path])[0], spec) is None
    except OSError:
        return False


def _identify(digests: dict, stem: str, exclude: str) -> str | None:
    """The registered dataset (other than `exclude`) whose file `stem` has these digests, if any."""
    for info in DATASETS.values():
        for spec in info.files:
            if info.name != exclude and spec.name == f"{stem}.gz" and _mismatch(digests, spec) is None:
                return info.name
    return None


def _check_identity(paths: Sequence[Path], dataset: str) -> None:
    """One-line DataError if a file is another registered dataset's (MNIST's asked for as Fashion-MNIST)."""
    for path, stem, digests in zip(paths, FILE_STEMS, _digests(paths)):
        other = _identify(digests, stem, dataset)
        if other is not None:
            want, got = _title(dataset), _title(other)
            raise DataError(f"{path.parent} holds {got}'s files, not {want}'s ({path.name} is {got}'s); "
                            f"point --data-dir or $JAXMLP_DATA_DIR at {want}'s files (a $JAXMLP_DATA_DIR/"
                            f"{dataset}/ subfolder is used first), or run `jaxmlp download --dataset {dataset}`")


def _fill_cache(folder: Path, info: DatasetInfo, may_download: bool, mirrors, progress: bool) -> None:
    """Make the cache folder hold info's four files, each matching the registry's checksums:
    download what is missing or does not match; one-line DataError with the ways out if that fails."""
    paths = [_find(folder, stem) for stem in FILE_STEMS]
    bad = [p for p, spec in zip(paths, info.files) if p is not None and not _verified(p, spec)]
    if not bad and None not in paths:
        return
    try:
        if not may_download:
            raise DownloadError("downloading is off")
        download(info.name, folder, mirrors=mirrors, progress=progress)
    except DownloadError as err:
        flag = "" if info.name == "mnist" else f" --dataset {info.name}"
        if not bad:
            raise DownloadError(f"no {_title(info.name)} data in {folder} and it could not be fetched "
                                f"({err}); {_ways_out(folder, info.name, None)}") from None
        stem = FILE_STEMS[paths.index(bad[0])]
        other = _identify(_digests([bad[0]])[0], stem, info.name)
        held = f" (it is {_title(other)}'s)" if other else ""
        raise DownloadError(f"{bad[0]} does not match {_title(info.name)}'s published checksum{held} and "
                            f"could not be fetched again ({err}); delete it and run `jaxmlp download{flag}` "
                            f"(add --mirror URL for another source), or give a folder with --data-dir DIR "
                            f"or $JAXMLP_DATA_DIR") from None


def _ensure(data_dir, dataset: str, num_classes: int | None, may_download: bool, mirrors,
            progress: bool) -> Dataset:
    info = _dataset_info(dataset)
    folder, source = _locate(data_dir, dataset)
    if source is None:
        _fill_cache(folder, info, may_download, mirrors, progress)
    paths = _find_all(folder, dataset, source)
    data = _load_paths(paths, info.num_classes if num_classes is None else num_classes)
    if source is not None:  # the cache's files were checked against the registry above
        _check_identity(paths, dataset)
    return data


def ensure_dataset(data_dir: str | os.PathLike | None, dataset: str = "mnist",
                   mirrors: Sequence[str] | None = None, progress: bool = False, *,
                   download: bool = True) -> Dataset:
    """Find the dataset's folder (see the module docstring), check it, and load it.

    Only the default cache is downloaded into (first use, or a file there that no longer matches the
    registry's SHA-256). An explicit folder (data_dir or $JAXMLP_DATA_DIR) is never written to (its
    hash stamp lives in the cache): if it lacks files, or holds another registered dataset's, a one-line
    DataError says what to do.
    """
    return _ensure(data_dir, dataset, None, download, mirrors, progress)


# ---------------------------------------------------------------- download


class _MirrorFailed(Exception):
    """One mirror's failure for one file; str() is the reason shown to the user."""


def _fetch(url: str, out, timeout: float, bar_enabled: bool, desc: str) -> None:
    """Stream url into the open binary file out; _MirrorFailed with a short reason on any failure."""
    got = 0
    total = None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "jaxmlp"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            scale, unit = (1e6, "MB") if (total or 0) >= 1e6 else (1e3, "kB")
            with Progress((total or 0) / scale, desc, enabled=bar_enabled, unit=unit) as bar:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk) / scale)
    except urllib.error.HTTPError as err:
        err.close()
        raise _MirrorFailed(f"HTTP {err.code}") from None
    except http.client.IncompleteRead:
        raise _MirrorFailed(f"connection closed after {got} of {total} bytes") from None
    except TimeoutError:
        raise _MirrorFailed(f"timed out after {timeout:g} s ({got} bytes received)") from None
    except urllib.error.URLError as err:
        reason = err.reason
        text = getattr(reason, "strerror", None) or str(reason)
        raise _MirrorFailed(text) from None
    except (http.client.HTTPException, OSError) as err:
        text = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise _MirrorFailed(f"{text} after {got} bytes") from None
    except ValueError as err:  # malformed URL
        raise _MirrorFailed(str(err)) from None
    # urllib does not complain when the server closes before Content-Length bytes: check ourselves.
    if total is not None and got != total:
        raise _MirrorFailed(f"connection closed after {got} of {total} bytes")


def _check_mirror(base: str) -> str:
    base = str(base).strip().rstrip("/")
    scheme = base.partition(":")[0].lower()
    if scheme not in ("http", "https", "file") or "://" not in base:
        raise DownloadError(f"--mirror {base!r}: expected an http://, https:// or file:// base URL")
    return base


def _fetch_verified(spec: RemoteFile, dest: Path, bases: Sequence[str], timeout: float,
                    progress: bool) -> None:
    """Fetch spec into dest from the first mirror whose copy verifies; DownloadError naming each failure.

    The bytes go to a temp name beside dest (``.NAME.PID.RANDOM.part``, fileio's naming, so a later
    download removes it if this process dies) that is removed on any exception, KeyboardInterrupt and
    SystemExit (e.g. SIGTERM turned into one) included.
    """
    failures = []
    for base in bases:
        tmp = temp_path(dest, "part")
        try:
            with open(tmp, "xb") as out:  # "xb": the user's umask (unlike mkstemp's 0600), never clobbers
                _fetch(f"{base}/{spec.name}", out, timeout, progress, spec.name)
            digests = _compute_digests(tmp)
            reason = _mismatch(digests, spec)
            if reason is not None:
                raise _MirrorFailed(reason)
            os.replace(tmp, dest)
            _remember(dest, digests)
            return
        except _MirrorFailed as err:
            failures.append(f"{base}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {spec.name}: {'; '.join(failures)}")


def download(dataset: str = "mnist", data_dir: str | os.PathLike | None = None,
             mirrors: Sequence[str] | None = None, progress: bool = False,
             timeout: float = 30.0) -> Path:
    """Download and verify a registry dataset's four files into the data folder; return the folder.

    mirrors (base URLs) replace the built-in list; each file is tried on each mirror in order.
    Files already present and verified are kept. A file appears under its own name only once its
    checksum is verified; temporary files are removed whatever fails, and those of dead earlier
    downloads are removed first. A folder holding another registered dataset's files is refused rather
    than overwritten. DownloadError (one line, naming every mirror and its failure) when no mirror
    yields a verified copy of some file.
    """
    info = _dataset_info(dataset)
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]
    bases = [_check_mirror(m) for m in mirrors] if mirrors else list(info.mirrors)
    folder = resolve_data_dir(data_dir, dataset)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create data folder {folder}: {err.strerror or err}") from None
    remove_stale_temps(folder)
    for spec in info.files:
        dest = folder / spec.name
        raw = folder / spec.name.removesuffix(".gz")
        if _verified(dest, spec) or (spec.content_sha256 is not None and _verified(raw, spec)):
            continue
        ours = folder == _cache_root() / dataset  # the cache is ours to overwrite; a user's folder is not
        other = _identify(_digests([dest])[0], raw.name, dataset) if dest.is_file() and not ours else None
        if other is not None:
            raise DownloadError(f"{folder} holds {_title(other)}'s files; download {_title(dataset)} into "
                                f"another folder (--data-dir DIR, or a {dataset}/ subfolder of "
                                f"$JAXMLP_DATA_DIR) instead of overwriting them")
        _fetch_verified(spec, dest, bases, timeout, progress)
    return folder


# ---------------------------------------------------------------- preprocessing (pure, jit-friendly)


def flatten(images) -> jnp.ndarray:
    """(N, rows, cols) -> (N, rows*cols), same dtype."""
    images = jnp.asarray(images)
    return jnp.reshape(images, (images.shape[0], math.prod(images.shape[1:])))


# The 256 possible pixel values divided by 255 in float32 by NumPy (correctly rounded, as in the
# notebook's ``astype(float32) / 255.0``). XLA's CPU float32 division is not correctly rounded (it
# differs in the last bit for about half the values), so normalizing is a table lookup instead.
_PIXEL_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)


def normalize(images, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 pixels -> [0, 1], any shape: exactly the notebook's ``astype(float32) / 255.0``, then
    cast to ``dtype`` (so float64 gives the notebook-exact mode the seed's very values)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"normalize expects uint8 pixels, got {images.dtype}")
        # On the host, NumPy's division is the reference itself, and no XLA program has to be
        # compiled for each new image shape (a second of a cold `jaxmlp train` otherwise).
        host = images.astype(np.float32)
        host /= np.float32(255.0)
        return jnp.asarray(host, dtype)
    images = jnp.asarray(images)
    if images.dtype != jnp.uint8:
        raise ValueError(f"normalize expects uint8 pixels, got {images.dtype}")
    return jnp.asarray(_PIXEL_VALUES).astype(dtype)[images]


def one_hot(labels, num_classes: int = 10, dtype=jnp.float32) -> jnp.ndarray:
    """(N,) integer labels -> (N, num_classes); a label outside [0, num_classes) gives a zero row."""
    labels = jnp.asarray(labels)
    return (labels[..., None] == jnp.arange(num_classes)).astype(dtype)
