"""Checkpoints: a training state PyTree plus a JSON ``meta`` dict in one pickle-free ``.npz``.

File layout (a zip of ``.npy`` members, so ``np.load(path, allow_pickle=False)`` reads every one)::

    format                 0-d str     "jaxmlp-checkpoint/2"
    meta                   (n,) uint8  UTF-8 JSON text of the ``meta`` dict (config, history, ...)
    state/<key path>       arrays      one per state leaf, named by its PyTree key path, e.g.
                                       state/params/0/W, state/opt_state/mu/0/b, state/key, state/epoch

The file does not describe the state's structure: :func:`load_state` restores it, strictly, against a
template (``jax.eval_shape`` of what the saved config builds): every template leaf present with exactly
its shape and dtype, no other member. :func:`load_params` needs none: it rebuilds the params from the
member names, or from the ``params_tree`` a ``jaxmlp.train`` checkpoint keeps in its meta.

Each member's size in the zip directory is checked before a byte is decompressed, then exactly the
announced bytes are read, so a corrupt or hostile file (zip bomb, huge or pickled header, deep JSON)
gives a one-line CheckpointError naming the file and the member, never an unpickling, a deep
recursion or an unbounded allocation. Writes are atomic
(:func:`jaxmlp.fileio.atomic_write`): a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._compat import enable_x64
from .fileio import atomic_write

FORMAT = "jaxmlp-checkpoint/2"
MAX_MEMBERS = 10_000          # zip entries a checkpoint may have
MAX_META_BYTES = 64 << 20     # the meta JSON text
MAX_HEADER_BYTES = 4096       # an npy header (numpy writes 128 bytes for the shapes we store)
MAX_DEPTH = 64                # nesting of the params ``load_params`` rebuilds
# What zipfile, zlib and numpy's header parser (ast.literal_eval, tokenize) raise on damaged bytes;
# RuntimeError covers RecursionError and NotImplementedError.
_UNREADABLE = (OSError, EOFError, ValueError, SyntaxError, RuntimeError, TypeError, LookupError, ArithmeticError,
               Warning, zipfile.BadZipFile, zlib.error, struct.error, tokenize.TokenError)


class CheckpointError(ValueError):
    """A checkpoint cannot be written (bad state or meta) or read (missing, corrupt, mismatched);
    the message is one line naming the file and, where there is one, the member."""


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]


def _error(path: Path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: member {name!r}: {problem}")


def _repeated(names: list[str]) -> str | None:
    """The first name that occurs twice, or None."""
    return next((n for n, count in collections.Counter(names).items() if count > 1), None)


def _named_leaves(path: Path, tree: Any) -> tuple[list[str], list[Any], Any]:
    """Member names ``state/<key path>``, the leaves, and the treedef of ``tree``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = ["state/" + jax.tree_util.keystr(kp, simple=True, separator="/") for kp, _ in flat]
    if dup := _repeated(names):
        raise _error(path, dup, "two state leaves share this name")
    return names, [leaf for _, leaf in flat], treedef


def save_checkpoint(path: str | os.PathLike, state: Any, meta: dict) -> Path:
    """Atomically write ``state`` and ``meta`` to exactly ``path`` (no suffix added).

    Args:
        path: the file to write.
        state: a PyTree of arrays (bool/int/uint/float/complex; a typed PRNG key must be unwrapped with
            ``jax.random.key_data``). If it has a ``params`` attribute, floating leaves there must be
            finite.
        meta: a JSON-serialisable dict (NumPy/JAX scalars become numbers).

    Returns:
        The path written. Raises CheckpointError, with nothing written, when either cannot be stored.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file name")
    arrays = {"format": np.array(FORMAT), "meta": _meta_bytes(path, meta)}
    names, leaves, _ = _named_leaves(path, state)
    check_finite = hasattr(state, "params")
    for name, leaf in zip(names, leaves):
        arr = _storable(path, name, leaf)
        if (check_finite and name.startswith("state/params/") and arr.dtype.kind in "fc"
                and not np.isfinite(arr).all()):
            raise _error(path, name, "refusing to save non-finite params (NaN or inf); nothing was written")
        arrays[name] = arr
    # The stub types **kwds as if a key could be savez's allow_pickle; ours are all 'format', 'meta', 'state/...'.
    return atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def _storable(path: Path, name: str, leaf: Any) -> np.ndarray:
    try:
        arr = np.asarray(leaf)
    except (TypeError, ValueError) as e:
        raise _error(path, name, f"not an array ({_one_line(e)})") from e
    if arr.dtype.kind not in "biufc":  # the dtypes an npy header names exactly
        raise _error(path, name, f"dtype {arr.dtype} cannot be stored (only bool, int, float, complex)")
    return arr


def _meta_bytes(path: Path, meta: dict) -> np.ndarray:
    def plain(obj):
        if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
            return np.asarray(obj).tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    if not isinstance(meta, dict):
        raise _error(path, "meta", f"must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps(meta, default=plain)
    except (TypeError, ValueError, RecursionError) as e:
        raise _error(path, "meta", _one_line(e)) from e
    data = np.frombuffer(text.encode(), np.uint8)
    if data.size > MAX_META_BYTES:
        raise _error(path, "meta", f"{data.size} bytes of JSON, more than {MAX_META_BYTES}")
    return data


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict of a checkpoint; only its ``format`` and ``meta`` members are read.

    Args:
        path: the checkpoint file.

    Returns:
        The meta dict, as ``save_checkpoint`` was given it.
    """
    path = Path(path)
    with _archive(path) as zf:
        _check_format(zf, path)
        data = _read_npy(zf, path, "meta", lambda spec: len(spec[0]) == 1 and spec[1] == np.uint8,
                         MAX_META_BYTES, "1-D uint8 JSON text")
    try:
        meta = json.loads(data.tobytes())
    except (ValueError, RecursionError) as e:
        raise _error(path, "meta", f"not JSON ({_one_line(e)})") from e
    if not isinstance(meta, dict):
        raise _error(path, "meta", f"holds a JSON {type(meta).__name__}, not an object")
    return meta


def load_state(path: str | os.PathLike, template: Any) -> Any:
    """The state saved in ``path``, as a PyTree of ``template``'s type with jax arrays as leaves.

    Args:
        path: the checkpoint file.
        template: a PyTree whose leaves are arrays or ``jax.ShapeDtypeStruct``; every leaf must be saved
            with exactly its shape and dtype, and the file may hold no other state.

    Returns:
        The state. Float64/int64 leaves come back as 64-bit jax arrays whatever ``jax_enable_x64`` says
        (arithmetic on them outside an x64 scope still rounds to 32 bits). Raises CheckpointError naming
        the file and the member.
    """
    path = Path(path)
    names, leaves, treedef = _named_leaves(path, template)
    specs = [_spec(path, name, leaf) for name, leaf in zip(names, leaves)]
    with _archive(path) as zf:
        _check_format(zf, path)
        _check_members(zf, path, names)
        arrays = [_read_leaf(zf, path, name, spec) for name, spec in zip(names, specs)]
    with enable_x64(True):  # so 64-bit leaves keep their dtype; narrower ones are unaffected
        return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays])


# ---------------------------------------------------------------- params without a template

_STEP_KINDS = {jax.tree_util.DictKey: "key", jax.tree_util.SequenceKey: "index",
               jax.tree_util.FlattenedIndexKey: "index", jax.tree_util.GetAttrKey: "attr"}


def describe_tree(tree: Any) -> list | None:
    """The structure of ``tree`` as JSON for a checkpoint's meta (``load_params`` rebuilds it).

    Args:
        tree: a PyTree (a params dict, list, NamedTuple...).

    Returns:
        One list of ``[kind, key]`` steps per leaf, kind "key" (a dict key, str or int), "index" (a list
        or tuple position) or "attr" (a NamedTuple field or attribute); None when a node is of another
        kind.
    """
    paths = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        steps = []
        for entry in path:
            kind = _STEP_KINDS.get(type(entry))
            key = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", None)))
            if kind is None or not isinstance(key, (str, int)) or isinstance(key, bool):
                return None
            steps.append([kind, key])
        paths.append(steps)
    return paths


def load_params(path: str | os.PathLike, *, max_bytes: int = 1 << 32) -> Any:
    """The params of any checkpoint jaxmlp wrote (``jaxmlp.train(checkpoint=...)``, ``jaxmlp train
    --save``), without a template: lists and dicts of jax arrays of the saved shapes and dtypes.

    A ``train`` checkpoint records its params' structure in its meta (``params_tree``, from
    ``describe_tree``); tuples come back as lists and NamedTuples as dicts. Without that record (the
    command line's checkpoints, whose params are a list of ``{"W", "b"}`` dicts) the structure is read
    from the member names: a level whose keys are exactly 0..n-1 is a list, any other a dict.

    Args:
        path: the checkpoint file.
        max_bytes: the most bytes the params may hold in all; more is refused from the zip directory
            and the npy headers, before those bytes are read (a zip bomb cannot make this allocate).

    Returns:
        The params: nested lists and dicts of jax arrays. Raises CheckpointError naming the file and
        the member.
    """
    path = Path(path)
    described = read_meta(path).get("params_tree")
    with _archive(path) as zf:
        _check_format(zf, path)
        stored = [n.removesuffix(".npy") for n in zf.namelist()]
        stored = [n for n in stored if n == "state/params" or n.startswith("state/params/")]
        steps = _described_steps(path, described) if described is not None else _name_steps(stored)
        if any(len(s) > MAX_DEPTH for s in steps):
            raise _error(path, "state/params", f"params nested deeper than {MAX_DEPTH} levels")
        names = [_member_name(s) for s in steps]
        if sorted(names) != sorted(stored):
            odd = sorted(set(names) ^ set(stored)) or ["state/params"]
            raise _error(path, odd[0], "the params members and the meta's 'params_tree' disagree")
        left, arrays = max_bytes, []
        for name in names:
            fits = functools.partial(_fits, left=left)
            arrays.append(_read_npy(zf, path, name, fits, left, f"an array of numbers within max_bytes {max_bytes}"))
            left -= arrays[-1].nbytes
    with enable_x64(True):  # 64-bit leaves keep their dtype
        return _rebuild(path, list(zip(steps, [jnp.asarray(a) for a in arrays])))


_JAX_DTYPES = {np.dtype(t) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                      "float16", "float32", "float64", "complex64", "complex128")}


def _fits(spec: tuple, left: int) -> bool:
    """An npy header's (shape, dtype) holds numbers a jax array can take (native byte order), in at most
    ``left`` bytes."""
    shape, dtype = spec
    return dtype in _JAX_DTYPES and dtype.isnative and math.prod(shape) * dtype.itemsize <= left


def _member_name(steps: list) -> str:
    keys = {"key": jax.tree_util.DictKey, "index": jax.tree_util.SequenceKey, "attr": jax.tree_util.GetAttrKey,
            "auto": jax.tree_util.DictKey}
    rest = jax.tree_util.keystr(tuple(keys[kind](key) for kind, key in steps), simple=True, separator="/")
    return "state/params" + (f"/{rest}" if steps else "")


def _described_steps(path: Path, described: Any) -> list:
    def step_ok(s) -> bool:
        return (isinstance(s, list) and len(s) == 2 and s[0] in ("key", "index", "attr")
                and isinstance(s[1], int if s[0] == "index" else (str, int)) and not isinstance(s[1], bool))

    if (not isinstance(described, list) or len(described) > MAX_MEMBERS
            or not all(isinstance(p, list) and all(step_ok(s) for s in p) for p in described)):
        raise _error(path, "meta", "'params_tree' is not a list of [kind, key] paths")
    return described


def _name_steps(names: list[str]) -> list:
    return [[["auto", part] for part in name.split("/")[2:]] for name in names]


def _rebuild(path: Path, items: list) -> Any:
    """The tree whose leaves are ``items``' values at their step paths."""
    if not items:
        raise _error(path, "state/params", "holds no params")
    if len(items) == 1 and not items[0][0]:
        return items[0][1]
    if any(not steps for steps, _ in items) or len({steps[0][0] for steps, _ in items}) > 1:
        raise _error(path, "state/params", "the params' structure cannot be rebuilt (a leaf and a node share a "
                                           "path, or one level mixes kinds of keys)")
    groups: dict = {}
    for steps, value in items:
        groups.setdefault(steps[0][1], []).append((steps[1:], value))
    children = {key: _rebuild(path, group) for key, group in groups.items()}
    kind = items[0][0][0][0]
    if kind == "auto" and all(k.isdecimal() for k in children):
        children = {int(k): v for k, v in children.items()}
    if kind in ("index", "auto") and sorted(children) == list(range(len(children))):
        return [children[i] for i in range(len(children))]
    if kind == "index":
        raise _error(path, "state/params", "the params' list positions are not 0..n-1")
    return {str(k) if kind == "auto" else k: v for k, v in children.items()}


def _spec(path: Path, name: str, leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    try:
        return tuple(int(n) for n in leaf.shape), np.dtype(leaf.dtype)
    except (AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: template leaf {name!r} is not an array or ShapeDtypeStruct "
                              f"with a NumPy dtype ({_one_line(e)})") from e


def _read_leaf(zf: zipfile.ZipFile, path: Path, name: str, spec: tuple) -> np.ndarray:
    shape, dtype = spec
    return _read_npy(zf, path, name, lambda got: got == spec, math.prod(shape) * dtype.itemsize,
                     f"{dtype}{list(shape)}")


def _check_members(zf: zipfile.ZipFile, path: Path, names: list[str]) -> None:
    """The file's state members are exactly the template's leaves."""
    have = {n.removesuffix(".npy") for n in zf.namelist()} - {"format", "meta"}
    missing, unknown = [n for n in names if n not in have], sorted(have - set(names))
    for what, odd in (("missing", missing), ("not in the template", unknown)):
        if odd:
            raise _error(path, odd[0], f"{what}: the saved state's structure differs from the template's "
                                       f"({len(odd)} such members; a different model or optimizer?)")


@contextlib.contextmanager
def _archive(path: Path) -> Iterator[zipfile.ZipFile]:
    """The open zip, once its directory is known to be small and free of duplicate names."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        zf = zipfile.ZipFile(path)
    except _UNREADABLE as e:
        raise CheckpointError(f"{path}: not a checkpoint (unreadable as a zip archive: {_one_line(e)})") from e
    with zf:
        names = zf.namelist()
        if len(names) > MAX_MEMBERS:
            raise CheckpointError(f"{path}: not a checkpoint ({len(names)} zip members, more than {MAX_MEMBERS})")
        if dup := _repeated(names):
            raise _error(path, dup.removesuffix(".npy"), "appears twice in the zip directory")
        yield zf


def _check_format(zf: zipfile.ZipFile, path: Path) -> None:
    fmt = _read_npy(zf, path, "format", lambda spec: spec[0] == () and spec[1].kind == "U",
                    1024, "a 0-d string")
    if str(fmt) != FORMAT:
        raise _error(path, "format", f"{str(fmt)[:80]!r} is not {FORMAT!r} (not a checkpoint of this version)")


def _read_npy(zf: zipfile.ZipFile, path: Path, name: str, accept: Callable[[tuple], bool],
              max_data: int, want: str) -> np.ndarray:
    """The array in member ``name``.npy, in bounded memory: the zip directory must declare at most
    ``max_data`` bytes plus a header, the npy header must pass ``accept((shape, dtype))`` (C order),
    and exactly the bytes it announces are then read (the zip CRC is checked at their end)."""
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise _error(path, name, f"missing (expected {want})") from None
    if info.flag_bits & 1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _error(path, name, "encrypted or compressed with an unsupported method")
    if info.file_size > max_data + MAX_HEADER_BYTES:
        raise _error(path, name, f"declares {info.file_size} bytes, more than {want} can take")
    try:
        with zf.open(info) as f:
            # numpy's header reader would ask the stream for as many bytes as the header claims.
            head = io.BytesIO(f.read(min(info.file_size, MAX_HEADER_BYTES)))
            shape, fortran, dtype = _read_header(head)
            nbytes = math.prod(shape) * dtype.itemsize
            if fortran or min(shape, default=0) < 0 or not accept((shape, dtype)):
                order = "Fortran-order " if fortran else ""
                raise _error(path, name, f"holds {order}{dtype.str}{list(shape)}, expected {want} (no casts)")
            if info.file_size != head.tell() + nbytes:
                raise _error(path, name, f"declares {info.file_size} bytes, not its header plus {nbytes}")
            data = head.read()
            data += f.read(nbytes - len(data))
        if len(data) != nbytes:
            raise _error(path, name, f"truncated ({len(data)} of {nbytes} bytes)")
        return np.frombuffer(data, dtype).reshape(shape)
    except CheckpointError:
        raise
    except _UNREADABLE as e:
        raise _error(path, name, f"unreadable ({_one_line(e)})") from e


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"npy format version {version} is not 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a Python 2 header numpy would rewrite and accept: refused
        return read(f, max_header_size=MAX_HEADER_BYTES)
