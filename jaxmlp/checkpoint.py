"""Checkpoints: params, optimizer state, PRNG key, epoch and config in one pickle-free ``.npz``.

File layout (every entry is a plain array, so ``np.load(path, allow_pickle=False)`` reads it)::

    format               0-d str   "jaxmlp-checkpoint/1"
    meta                 0-d str   JSON: params structure, leaf names, key kind, dtypes, extra kinds
    params/<i>/W ...     arrays    one per params leaf, named by its PyTree key path
    opt_state/00000 ...  arrays    optimizer-state leaves in ``jax.tree_util`` flatten order
    key                  uint32    raw PRNG key data (typed keys are unwrapped; ``meta`` says which)
    epoch                0-d int64
    config               0-d str   JSON text
    extra/<name>         arrays, or 0-d str JSON text for non-array values (e.g. metrics history)

Writes are atomic: the file is written next to the target under a temporary name, fsynced and
renamed over it, so a crash or an error mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

FORMAT = "jaxmlp-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be written (bad state) or read (missing, corrupt, mismatched)."""


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns.

    ``params``/``opt_state`` hold jax arrays with the saved dtypes; ``opt_state`` is a flat leaf
    list unless a template was given; ``key`` is the saved key kind (typed or raw uint32) or None.
    """

    params: Any
    opt_state: Any
    key: Any
    epoch: int
    config: dict
    extra: dict


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike,
    *,
    params: Any,
    opt_state: Any,
    key: Any,
    epoch: int,
    config: dict,
    extra: dict | None = None,
) -> Path:
    """Atomically write a checkpoint to exactly ``path`` (no suffix is added) and return it.

    params: PyTree of arrays (normally the list of {"W", "b"} dicts); must be finite.
    opt_state: any PyTree of arrays; key: typed or raw uint32 PRNG key, or None.
    config: JSON-serialisable dict (how to rebuild the model and optimizer).
    extra: name -> array (stored as is) or JSON-serialisable value (stored as JSON text).
    Raises CheckpointError before touching the file system if anything cannot be stored.
    """
    path = Path(path)
    # Build every array first, so bad input never gets as far as creating a temporary file.
    arrays, meta = _encode(path, params, opt_state, key, epoch, config, extra)
    arrays["format"] = np.array(FORMAT)
    arrays["meta"] = np.array(json.dumps(meta))
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file name")
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); keep the old checkpoint's mode, else a usual 0644.
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not every OS/file system lets a directory be opened."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _encode(path, params, opt_state, key, epoch, config, extra):
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}

    def put(name: str, value: Any, what: str, finite: bool = False) -> None:
        arr = _to_numpy(value, f"{path}: {what}")
        if finite and jax.numpy.issubdtype(arr.dtype, jax.numpy.inexact) and not np.all(np.isfinite(arr)):
            raise CheckpointError(
                f"{path}: refusing to save non-finite params ({name!r} has NaN/inf); "
                "nothing was written"
            )
        if arr.dtype.kind == "V":
            # Extended dtypes (bfloat16, float8...) would be saved as anonymous void bytes:
            # store the bits as unsigned ints and remember the real dtype.
            dtypes[name] = arr.dtype.name
            arr = arr.view(f"u{arr.dtype.itemsize}")
        arrays[name] = arr

    # params: leaves named by key path, plus a JSON description of the containers.
    path_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    params_names = []
    for key_path, leaf in path_leaves:
        name = "params/" + _path_name(key_path)
        if name in arrays:
            raise CheckpointError(f"{path}: two params leaves share the name {name!r}")
        put(name, leaf, f"params leaf {name!r}", finite=True)
        params_names.append(name)
    structure = _structure(params, "params", set(params_names))

    opt_leaves = jax.tree_util.tree_leaves(opt_state)
    for i, leaf in enumerate(opt_leaves):
        put(f"opt_state/{i:05d}", leaf, f"opt_state leaf {i}")

    if key is None:
        key_meta = {"kind": "none"}
    elif jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        impl = jax.random.key_impl(key)
        impl_name = impl if isinstance(impl, str) else getattr(impl, "name", str(impl))
        key_meta = {"kind": "typed", "impl": impl_name}
        put("key", jax.random.key_data(key), "PRNG key")
    else:
        raw = _to_numpy(key, f"{path}: PRNG key")
        if raw.dtype != np.uint32:
            raise CheckpointError(f"{path}: PRNG key must be a typed key or uint32 data, got {raw.dtype}")
        key_meta = {"kind": "raw"}
        arrays["key"] = raw

    try:
        bad_epoch = isinstance(epoch, (bool, np.bool_)) or int(epoch) != epoch or int(epoch) < 0
    except (TypeError, ValueError):
        bad_epoch = True
    if bad_epoch:
        raise CheckpointError(f"{path}: epoch must be a non-negative integer, got {epoch!r}")
    arrays["epoch"] = np.array(int(epoch), dtype=np.int64)

    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config must be a dict, got {type(config).__name__}")
    arrays["config"] = np.array(_json(config, f"{path}: config"))

    extra_kinds = {}
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{path}: extra names must be non-empty strings, got {name!r}")
        if isinstance(value, (np.ndarray, jax.Array)):
            put(f"extra/{name}", value, f"extra {name!r}")
            extra_kinds[name] = "array"
        else:
            arrays[f"extra/{name}"] = np.array(_json(value, f"{path}: extra {name!r}"))
            extra_kinds[name] = "json"

    meta = {
        "params_structure": structure,
        "params_leaves": params_names,
        "opt_state_leaves": len(opt_leaves),
        "opt_state_treedef": str(jax.tree_util.tree_structure(opt_state)),
        "key": key_meta,
        "dtypes": dtypes,
        "extra": extra_kinds,
    }
    return arrays, meta


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        raise CheckpointError(f"{what}: typed PRNG keys are only supported as the `key` argument")
    if not isinstance(value, (np.ndarray, np.generic, jax.Array)):
        # Python scalars take JAX's default dtype (int32 unless x64), as they would in a jitted step.
        try:
            value = jax.numpy.asarray(value)
        except TypeError as e:
            raise CheckpointError(f"{what}: not an array ({_one_line(e)})") from e
    arr = np.asarray(value)
    if arr.dtype == object:
        raise CheckpointError(f"{what}: cannot store an object array (it would need pickle)")
    return arr


def _json(value: Any, what: str) -> str:
    def default(obj):
        # NumPy/JAX scalars and small arrays are common in configs and metrics.
        if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
            return np.asarray(obj).tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    try:
        return json.dumps(value, default=default)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: {e}") from e


def _path_name(key_path) -> str:
    parts = []
    for entry in key_path:
        for attr in ("idx", "key", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _structure(node: Any, name: str, leaf_names: set[str]) -> Any:
    """JSON description of plain containers (dict/list/tuple/None); None if anything else appears."""
    try:
        return _structure_rec(node, name, leaf_names)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _structure_rec(node, name, leaf_names):
    if node is None:
        return {"none": True}
    if type(node) is dict:
        if not all(isinstance(k, str) for k in node):
            raise _Unsupported
        return {"dict": {k: _structure_rec(v, f"{name}/{k}", leaf_names) for k, v in node.items()}}
    if type(node) in (list, tuple):
        kind = type(node).__name__
        return {kind: [_structure_rec(v, f"{name}/{i}", leaf_names) for i, v in enumerate(node)]}
    if name in leaf_names:
        return {"leaf": name}
    # A container type jax knows but this description does not (NamedTuple, custom node...).
    raise _Unsupported


# ----------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | os.PathLike,
    *,
    opt_state_template: Any = None,
    params_template: Any = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; arrays come back bit-exact.

    opt_state_template: e.g. ``optimizer.init(params)`` built from the saved config; its PyTree
    structure is used to rebuild ``opt_state`` and its leaves' shapes/dtypes are checked.
    Without it ``opt_state`` is the flat list of leaves. params_template does the same for params
    (needed only when params were not plain dicts/lists/tuples).
    Raises CheckpointError (one line, naming the file) when the file is missing, corrupt,
    truncated, not a jaxmlp checkpoint, or does not match a template.
    """
    path = Path(path)
    arrays = _read_npz(path)

    def need(name: str) -> np.ndarray:
        if name not in arrays:
            raise CheckpointError(f"{path}: corrupt checkpoint, entry {name!r} is missing")
        return arrays[name]

    fmt = str(need("format"))
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {fmt!r} (expected {FORMAT!r})")
    try:
        meta = json.loads(str(need("meta")))
        dtypes = meta["dtypes"]
        params_names = list(meta["params_leaves"])
        structure = meta["params_structure"]
        n_opt = int(meta["opt_state_leaves"])
        key_meta = meta["key"]
        extra_kinds = meta["extra"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({_one_line(e)})") from e

    def restore(name: str) -> np.ndarray:
        arr = need(name)
        if name in dtypes:
            arr = arr.view(jax.numpy.dtype(dtypes[name]))
        return arr

    params_leaves = {name: restore(name) for name in params_names}
    if params_template is not None:
        params = _fill_template(path, "params", params_template, [params_leaves[n] for n in params_names])
    elif structure is None:
        raise CheckpointError(
            f"{path}: params were saved with a custom PyTree structure; pass params_template"
        )
    else:
        params = _build(path, structure, params_leaves)

    opt_leaves = [restore(f"opt_state/{i:05d}") for i in range(n_opt)]
    if opt_state_template is not None:
        opt_state = _fill_template(path, "opt_state", opt_state_template, opt_leaves)
    else:
        opt_state = [_to_jax(path, f"opt_state leaf {i}", a) for i, a in enumerate(opt_leaves)]

    kind = key_meta.get("kind")
    if kind == "none":
        key = None
    elif kind == "typed":
        key = jax.random.wrap_key_data(need("key"), impl=key_meta["impl"])
    elif kind == "raw":
        key = _to_jax(path, "PRNG key", need("key"))
    else:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (unknown key kind {kind!r})")

    epoch = int(need("epoch"))
    try:
        config = json.loads(str(need("config")))
        extra = {}
        for name, how in extra_kinds.items():
            entry = f"extra/{name}"
            extra[name] = restore(entry) if how == "array" else json.loads(str(need(entry)))
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: corrupt checkpoint, bad JSON ({_one_line(e)})") from e
    return Checkpoint(params, opt_state, key, epoch, config, extra)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every entry of the file, read eagerly so corruption surfaces here as CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: not a checkpoint (a single .npy array, not an .npz)")
            return {name: npz[name] for name in npz.files}
    except CheckpointError:
        raise
    except AttributeError:
        # np.load returns a bare ndarray (no context manager) for .npy files.
        raise CheckpointError(f"{path}: not a checkpoint (a single .npy array, not an .npz)") from None
    except Exception as e:  # zipfile, zlib, npy-header and OS errors all mean "unreadable"
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _to_jax(path: Path, what: str, arr: np.ndarray) -> jax.Array:
    # With jax_enable_x64 off, float64 would be silently rounded to float32: refuse instead.
    if jax.dtypes.canonicalize_dtype(arr.dtype) != arr.dtype:
        raise CheckpointError(
            f"{path}: {what} is {arr.dtype}, which JAX would round to 32 bits; "
            "enable jax_enable_x64 to load this checkpoint"
        )
    return jax.numpy.asarray(arr)


def _build(path: Path, node: Any, leaves: dict[str, np.ndarray]) -> Any:
    try:
        if "none" in node:
            return None
        if "leaf" in node:
            return _to_jax(path, f"params leaf {node['leaf']!r}", leaves[node["leaf"]])
        if "dict" in node:
            return {k: _build(path, v, leaves) for k, v in node["dict"].items()}
        if "list" in node:
            return [_build(path, v, leaves) for v in node["list"]]
        if "tuple" in node:
            return tuple(_build(path, v, leaves) for v in node["tuple"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt params structure ({_one_line(e)})") from e
    raise CheckpointError(f"{path}: corrupt params structure (unknown node {node!r:.80})")


def _fill_template(path: Path, what: str, template: Any, leaves: list[np.ndarray]) -> Any:
    t_leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(t_leaves) != len(leaves):
        raise CheckpointError(
            f"{path}: {what} has {len(leaves)} leaves but the template has {len(t_leaves)} "
            "(different model or optimizer?)"
        )
    out = []
    for i, (t, arr) in enumerate(zip(t_leaves, leaves)):
        t_shape = np.shape(t)
        t_dtype = t.dtype if hasattr(t, "dtype") else jax.numpy.asarray(t).dtype
        if arr.shape != t_shape or arr.dtype != t_dtype:
            raise CheckpointError(
                f"{path}: {what} leaf {i} is {arr.dtype}{list(arr.shape)} "
                f"but the template expects {t_dtype}{list(t_shape)}"
            )
        out.append(_to_jax(path, f"{what} leaf {i}", arr))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------- models


def load_model(path: str | os.PathLike) -> tuple[Any, dict]:
    """``(params, config)`` of a checkpoint written by training, ready for ``forward``/``evaluate``.

    params: the list of {"W", "b"} dicts with the saved dtypes; config: the run's TrainConfig as a
    dict (``arch``, ``dtype``, ``dataset``, ...). Float64 params turn ``jax_enable_x64`` on (as
    training them did) rather than being refused. Raises CheckpointError (one line, naming the file)
    when the file is unreadable or does not hold a model's params.
    """
    path = Path(path)
    arrays = _read_npz(path)
    if not jax.config.jax_enable_x64 and any(
            name.startswith("params/") and a.dtype == np.float64 for name, a in arrays.items()):
        jax.config.update("jax_enable_x64", True)
    ckpt = load_checkpoint(path)
    params, config = ckpt.params, ckpt.config
    ok = (isinstance(params, list) and params
          and all(isinstance(layer, dict) and {"W", "b"} <= set(layer) for layer in params))
    if not ok:
        raise CheckpointError(f"{path}: the checkpoint's params are not a list of {{'W', 'b'}} layers")
    if not isinstance(config, dict) or config.get("arch", "mlp") not in ("mlp", "cnn"):
        raise CheckpointError(f"{path}: the checkpoint's config does not name an architecture (mlp or cnn)")
    return params, config
