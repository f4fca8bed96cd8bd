"""Datasets in MNIST's IDX layout: parse, locate, download, verify, preprocess.

The IDX format (LeCun's): two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension and the values, big-endian, row-major. Files may be gzip-compressed.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import secrets
import socket
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from jaxmlp.progress import Progress


class DataError(ValueError):
    """A dataset folder or file that cannot be used (missing, malformed, inconsistent)."""


class IDXError(DataError):
    """An IDX file that cannot be parsed; the message names the file and what is wrong."""


class DownloadError(DataError):
    """Every mirror failed for some file; the message names each mirror and its failure."""


# ---------------------------------------------------------------- IDX files

# Type code -> on-disk (big-endian) dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(raw: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        # EOFError: stream cut short; BadGzipFile (an OSError) / zlib.error: corrupt bytes or CRC.
        raise IDXError(f"{name}: corrupt or truncated gzip data ({err})") from None


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (gzip or raw) into a native-endian array; IDXError if malformed."""
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(raw, name)
    if len(raw) < 4:
        raise IDXError(f"{name}: truncated: {len(raw)} bytes, an IDX header needs at least 4")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{name}: not an IDX file: magic starts with {raw[:2].hex(' ')}, expected 00 00")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXError(f"{name}: header declares 0 dimensions (need at least 1)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{name}: truncated: header declares {ndim} dimensions ({header} header bytes), "
                       f"file has {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    # Python ints: the product of declared dimensions can exceed int64.
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise IDXError(f"{name}: truncated: header declares {expected} payload bytes, file has {got}")
    if got > expected:
        raise IDXError(f"{name}: {got - expected} unexpected bytes after the payload "
                       f"(header declares {expected} payload bytes, file has {got})")
    values = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip (detected by its magic bytes) or raw, as a native-endian array.

    Raises IDXError (a ValueError) naming the file for anything malformed or unreadable.
    """
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise IDXError(f"{name}: no such file") from None
    except OSError as err:
        raise IDXError(f"{name}: cannot read: {err.strerror or err}") from None
    return parse_idx(raw, name)


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


def _candidates(folder: Path, stem: str) -> list[Path]:
    # The notebook names them train-images.idx3-ubyte; the distribution train-images-idx3-ubyte.gz.
    prefix, _, rest = stem.rpartition("-idx")
    dotted = f"{prefix}.idx{rest}"
    return [folder / f"{stem}.gz", folder / stem, folder / f"{dotted}.gz", folder / dotted]


def _find(folder: Path, stem: str) -> Path | None:
    return next((p for p in _candidates(folder, stem) if p.is_file()), None)


def _find_all(folder: Path, dataset: str = "mnist") -> list[Path]:
    """The four files' paths in Dataset order; DataError (with a download hint) if any is missing."""
    flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    hint = f"run `jaxmlp download{flag} --data-dir {folder}` to fetch it"
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise DataError(f"data folder {folder} is not a folder; {hint}")
    if not any(folder.iterdir()):
        raise DataError(f"data folder {folder} is empty; {hint}")
    paths = [_find(folder, stem) for stem in FILE_STEMS]
    missing = [stem for stem, p in zip(FILE_STEMS, paths) if p is None]
    if missing:
        raise DataError(f"data folder {folder} has no {', '.join(missing)} (.gz or uncompressed); {hint}")
    return paths


def load_dataset(data_dir: str | os.PathLike, num_classes: int = 10) -> Dataset:
    """Load the four MNIST-layout IDX files from data_dir and check they form a dataset.

    Returns uint8 images (N, rows, cols) and labels (N,) in [0, num_classes). DataError/IDXError
    (ValueErrors) name the folder or file for anything missing, malformed or inconsistent.
    """
    if not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= 256:
        raise DataError(f"num_classes must be an integer in [1, 256] for uint8 labels, got {num_classes!r}")
    paths = _find_all(Path(data_dir).expanduser())
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


# ---------------------------------------------------------------- where the data lives


def _explicit_dir(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("JAXMLP_DATA_DIR")
    return Path(env).expanduser() if env else None


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str = "mnist") -> Path:
    """The data folder: data_dir if given, else $JAXMLP_DATA_DIR, else the cache
    ($XDG_CACHE_HOME or ~/.cache)/jaxmlp/<dataset>."""
    explicit = _explicit_dir(data_dir)
    if explicit is not None:
        return explicit
    _dataset_info(dataset)  # the name becomes a folder: only registry names
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "jaxmlp" / dataset


def ensure_dataset(data_dir: str | os.PathLike | None, dataset: str = "mnist",
                   mirrors: Sequence[str] | None = None, progress: bool = False) -> Dataset:
    """Resolve the data folder and load it, downloading first only into the default cache.

    An explicit folder (data_dir or $JAXMLP_DATA_DIR) is never downloaded into: if it lacks files,
    DataError says how to fetch them.
    """
    info = _dataset_info(dataset)
    folder = resolve_data_dir(data_dir, dataset)
    if _explicit_dir(data_dir) is not None:
        _find_all(folder, dataset)  # the error names the dataset in its download hint
    elif any(_find(folder, s) is None for s in FILE_STEMS):
        download(dataset, folder, mirrors=mirrors, progress=progress)
    return load_dataset(folder, num_classes=info.num_classes)


# ---------------------------------------------------------------- download


class _MirrorFailed(Exception):
    """One mirror's failure for one file; str() is the reason shown to the user."""


def _sha256_of_contents(path: Path) -> str:
    """SHA-256 of the file's decompressed bytes (the bytes themselves if it is not gzip)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_of_bytes(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, spec: RemoteFile) -> str | None:
    """None if path matches spec's checksums, else the reason it does not."""
    if spec.gzip_sha256 is not None and _sha256_of_bytes(path) != spec.gzip_sha256:
        return "checksum mismatch"
    if spec.content_sha256 is not None:
        try:
            digest = _sha256_of_contents(path)
        except (OSError, EOFError, zlib.error):
            return "corrupt gzip data"
        if digest != spec.content_sha256:
            return "checksum mismatch"
    return None


def _verified(path: Path, spec: RemoteFile) -> bool:
    try:
        return path.is_file() and _check(path, spec) is None
    except OSError:
        return False


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
    except (socket.timeout, TimeoutError):
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


def download(dataset: str = "mnist", data_dir: str | os.PathLike | None = None,
             mirrors: Sequence[str] | None = None, progress: bool = False,
             timeout: float = 30.0) -> Path:
    """Download and verify a registry dataset's four files into the data folder; return the folder.

    mirrors (base URLs) replace the built-in list; each file is tried on each mirror in order.
    Files already present and verified are kept. A file appears under its own name only once its
    checksum is verified; temporary files are removed whatever fails. DownloadError (one line,
    naming every mirror and its failure) when no mirror yields a verified copy of some file.
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
    for spec in info.files:
        dest = folder / spec.name
        raw = folder / spec.name.removesuffix(".gz")
        if _verified(dest, spec) or (spec.content_sha256 is not None and _verified(raw, spec)):
            continue
        failures = []
        for base in bases:
            # A hidden, unique name in the same folder, so os.replace is atomic; "xb" creates it with
            # the user's umask (unlike mkstemp's 0600) and never clobbers another download's file.
            tmp = folder / f".{spec.name}.{secrets.token_hex(6)}.part"
            try:
                with open(tmp, "xb") as out:
                    _fetch(f"{base}/{spec.name}", out, timeout, progress, spec.name)
                reason = _check(tmp, spec)
                if reason is not None:
                    raise _MirrorFailed(reason)
                os.replace(tmp, dest)
                break
            except _MirrorFailed as err:
                failures.append(f"{base}: {err}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise DownloadError(f"could not download {spec.name}: {'; '.join(failures)}")
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
