"""Images a user hands in (``jaxmlp predict``'s input): an IDX or .npy file, read with the same bounds as
the IDX reader (no pickles, at most MAX_ARRAY_BYTES, exactly what the file holds), checked as pixels."""
from __future__ import annotations

import io
import math
import os

import numpy as np

from . import idx
from .errors import DataError
from .idx import GZIP_MAGIC, open_file, read_idx_from, read_into, read_upto, size_text

_NPY_MAGIC = b"\x93NUMPY"


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
    if nbytes > idx.MAX_ARRAY_BYTES:
        raise DataError(f"{name}: .npy header declares {size_text(nbytes)} bytes, more than the "
                        f"{idx.MAX_ARRAY_BYTES} jaxmlp reads (jaxmlp.data.idx.MAX_ARRAY_BYTES)")
    if have != nbytes:
        raise DataError(f"{name}: unreadable .npy file (header declares {nbytes} data bytes, file has {have})")
    values = np.empty(math.prod(shape), dtype)
    try:
        got = read_into(f, values.view(np.uint8))
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
    """Images from the IDX (gzip or raw) or .npy file at path.

    Accepts (N, rows, cols) and (N, F) arrays. Reads are bounded (MAX_ARRAY_BYTES, the file's size;
    pickled .npy arrays and non-regular files are refused).

    Args:
        path: the file.

    Returns:
        ``(array (N, F), kind)``: kind "pixels" for uint8 values 0..255 (integer inputs), kind "unit"
        for float values in [0, 1] (pixel / 255), dtype as stored. DataError (a ValueError) naming the
        file for anything else.
    """
    name = os.fspath(path)
    f, size = open_file(path, DataError)
    with f:
        try:
            magic = read_upto(f, len(_NPY_MAGIC))
            f.seek(0)
        except OSError as err:
            raise DataError(f"{name}: cannot read: {err.strerror or err}") from None
        if magic == _NPY_MAGIC:
            images = _read_npy(f, name, size)
        elif magic[:2] in (b"\x00\x00", GZIP_MAGIC):
            images = read_idx_from(f, name, size)  # IDXError names the file
        else:
            raise DataError(f"{name}: neither a .npy array nor an IDX file (gzip or raw)")
    return _as_pixels(images, name)
