"""Verifying a dataset's files against the registry's SHA-256 sums, hashing each file only once.

Hashes are remembered in a small JSON stamp keyed by each file's size, mtime and ctime, so a run in which
nothing changed reads one small file instead of hashing the data. The stamp lies beside the files in the
cache (``.jaxmlp-sha256.json``) and, for any other folder, which is never written to, in the cache's
``jaxmlp/stamps/`` under a hash of the folder's path.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

from ..fileio import write_json
from . import idx
from .errors import DataError
from .idx import CHUNK, GZIP_MAGIC
from .locate import STAMP, cache_root
from .registry import DATASETS, FILE_STEMS, RemoteFile, title


def _stamp_path(folder: Path) -> Path:
    """Beside the files in our own cache folder; for any other folder (never written to) under the
    cache's stamps/, named by a hash of the folder's real path."""
    if folder.parent == cache_root():
        return folder / STAMP
    key = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:24]
    return cache_root() / "stamps" / f"{key}.json"


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
        gz = f.read(2) == GZIP_MAGIC
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            total += len(chunk)
            if total > idx.MAX_ARRAY_BYTES + 4 + 4 * 255:
                return ""
    return digest.hexdigest()


def _sha256_of_bytes(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compute_digests(path: Path) -> dict:
    """{"sha256": of the bytes at ``path``, "content_sha256": of the decompressed bytes, None if the
    gzip is corrupt}."""
    raw = _sha256_of_bytes(path)
    try:
        content = _sha256_of_contents(path)
    except (gzip.BadGzipFile, EOFError, zlib.error):
        content = None
    return {"sha256": raw, "content_sha256": content}


def cached_digests(paths: Sequence[Path]) -> list[dict]:
    """compute_digests of ``paths``, files in one folder, each remembered in the stamp while its size,
    mtime and ctime stay the same (stat before hashing: a file changed meanwhile is hashed again next time)."""
    folder = paths[0].parent
    stamps, changed, out = _read_stamps(folder), False, []
    for path in paths:
        key = _file_key(path)
        entry = stamps.get(path.name)
        if entry is None or entry.get("key") != key:
            entry = stamps[path.name] = {"key": key, **compute_digests(path)}
            changed = True
        out.append(entry)
    if changed:
        _write_stamps(folder, stamps)
    return out


def remember(path: Path, found: dict) -> None:
    """Record found (compute_digests of path) in path's folder's stamp."""
    stamps = _read_stamps(path.parent)
    stamps[path.name] = {"key": _file_key(path), **found}
    _write_stamps(path.parent, stamps)


def mismatch(digests: dict, spec: RemoteFile) -> str | None:
    """None if the digests match every checksum spec has, else the reason they do not."""
    if spec.gzip_sha256 is not None and digests.get("sha256") != spec.gzip_sha256:
        return "checksum mismatch"
    if spec.content_sha256 is not None:
        if digests.get("content_sha256") is None:
            return "corrupt gzip data"
        if digests["content_sha256"] != spec.content_sha256:
            return "checksum mismatch"
    return None


def verified(path: Path, spec: RemoteFile) -> bool:
    """Whether path is a file matching every checksum spec has (False if it cannot be read)."""
    try:
        return path.is_file() and mismatch(cached_digests([path])[0], spec) is None
    except OSError:
        return False


def identify(digests: dict, stem: str, exclude: str) -> str | None:
    """The registered dataset (other than `exclude`) whose file `stem` has these digests, if any."""
    for info in DATASETS.values():
        for spec in info.files:
            if info.name != exclude and spec.name == f"{stem}.gz" and mismatch(digests, spec) is None:
                return info.name
    return None


def check_identity(paths: Sequence[Path], dataset: str) -> None:
    """One-line DataError if a file of ``paths`` (in Dataset order) is another registered dataset's than
    ``dataset``'s (MNIST's asked for as Fashion-MNIST)."""
    for path, stem, found in zip(paths, FILE_STEMS, cached_digests(paths)):
        other = identify(found, stem, dataset)
        if other is not None:
            want, got = title(dataset), title(other)
            raise DataError(f"{path.parent} holds {got}'s files, not {want}'s ({path.name} is {got}'s); "
                            f"point --data-dir or $JAXMLP_DATA_DIR at {want}'s files (a $JAXMLP_DATA_DIR/"
                            f"{dataset}/ subfolder is used first), or run `jaxmlp download --dataset {dataset}`")
