"""IDX files (LeCun's MNIST format): a bounded streaming reader and a writer.

The format: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension and the values, big-endian, row-major. Files may be gzip-compressed.

Reading is bounded: the header is read first, a payload larger than MAX_ARRAY_BYTES (or larger than a raw
file holds, or than its gzip data could inflate to) is refused before anything is allocated, and the
payload is decompressed into one array of exactly the declared size, never past it plus one byte. So
peak memory is about the largest array accepted, whatever the file claims or inflates to.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError, IDXError

# Type code -> on-disk (big-endian) dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"

# The most bytes one array read from a file (IDX payload or .npy data) may hold: 1 GiB. Real IDX datasets
# fit with room to spare (MNIST's training images are 47 MB, EMNIST ByClass's 0.55 GB); a header that
# declares more is refused before anything is allocated.
MAX_ARRAY_BYTES = 1 << 30
# Deflate turns one input byte into at most ~1032 output bytes: gzip data of S bytes cannot hold more.
_DEFLATE_MAX_RATIO = 1032
CHUNK = 1 << 20


def size_text(n: int) -> str:
    """The byte count ``n`` for a message; products of 255 declared dimensions can have thousands of digits."""
    return str(n) if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def read_upto(stream: io.BufferedIOBase, n: int) -> bytes:
    """Up to n bytes, fewer only at the end of the stream."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_into(stream: io.BufferedIOBase, buf: np.ndarray) -> int:
    """Fill the 1-D uint8 array buf from stream in bounded pieces; return the bytes read."""
    view, got = buf.data, 0  # buf.data: a memoryview of buf
    while got < len(view):
        n = stream.readinto(view[got:got + CHUNK])
        if not n:
            break
        got += n
    return got


def _idx_header(stream: io.BufferedIOBase, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and check an IDX header: (on-disk dtype, shape, header bytes)."""
    head = read_upto(stream, 4)
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
    dims = read_upto(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise IDXError(f"{name}: truncated: header declares {ndim} dimensions ({4 + 4 * ndim} header "
                       f"bytes), file has {4 + len(dims)} bytes")
    return IDX_DTYPES[code], struct.unpack(f">{ndim}I", dims), 4 + 4 * ndim


def _check_declared(name: str, expected: int, size: int, header: int, gz: bool) -> None:
    """IDXError unless a payload of `expected` bytes is allowed and fits a file of `size` bytes."""
    if expected > MAX_ARRAY_BYTES:
        raise IDXError(f"{name}: header declares {size_text(expected)} payload bytes, more than the "
                       f"{MAX_ARRAY_BYTES} jaxmlp reads (jaxmlp.data.idx.MAX_ARRAY_BYTES)")
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


def read_idx_from(f: io.BufferedIOBase, name: str, size: int) -> np.ndarray:
    """The array in the IDX file open as f (at offset 0, `size` bytes, gzip or raw), native-endian;
    errors (``IDXError``) start with ``name``."""
    gz = read_upto(f, 2) == GZIP_MAGIC
    f.seek(0)
    stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
    try:
        dtype, shape, header = _idx_header(stream, name)
        expected = math.prod(shape) * dtype.itemsize  # Python ints: may exceed int64
        _check_declared(name, expected, size, header, gz)
        values = np.empty(expected // dtype.itemsize, dtype)
        got = read_into(stream, values.view(np.uint8))
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


def open_file(path: str | os.PathLike, error: type[DataError]) -> tuple[io.BufferedIOBase, int]:
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
    """The array in the bytes of an IDX file (gzip or raw), native-endian.

    Args:
        raw: the file's bytes.
        name: what the message calls the bytes.

    Returns:
        The array; IDXError naming ``name`` if the bytes are malformed.
    """
    return read_idx_from(io.BytesIO(raw), name, len(raw))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read the IDX file at path, gzip (detected by its magic bytes) or raw, as a native-endian array.

    Streams from the file with bounded memory (see MAX_ARRAY_BYTES).

    Args:
        path: the file.

    Returns:
        The array. Raises IDXError (a ValueError) naming the file for anything malformed, oversized,
        unreadable or not a regular file.
    """
    f, size = open_file(path, IDXError)
    with f:
        return read_idx_from(f, os.fspath(path), size)


def write_idx(path: str | os.PathLike, array) -> None:
    """Write an array to path as IDX; gzip if path ends in .gz.

    Args:
        path: the file to write.
        array: 1 to 255 dims, one of the six IDX dtypes; ValueError naming path for a dtype, rank or
            dimension IDX cannot store.
    """
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
