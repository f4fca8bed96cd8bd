"""Where a dataset's four files live, and the one-line messages when they are not there.

First match wins:
  1. the folder given (``--data-dir DIR``, ``data_dir=``): exactly that folder;
  2. ``$JAXMLP_DATA_DIR``: its subfolder named after the dataset (``$JAXMLP_DATA_DIR/fashion-mnist/``)
     when that exists, else the variable's folder itself. So one variable can serve several datasets
     (one subfolder each) or name one dataset's folder directly;
  3. the cache ``($XDG_CACHE_HOME or ~/.cache)/jaxmlp/DATASET``, downloaded there on first use.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError
from .registry import FILE_STEMS, dataset_info, title

# The hash stamp's name in a cache folder (jaxmlp.data.verify); not one of the dataset's files.
STAMP = ".jaxmlp-sha256.json"


def locate(data_dir: str | os.PathLike | None, dataset: str) -> tuple[Path, str | None]:
    """(folder, where its path came from: "--data-dir", "$JAXMLP_DATA_DIR", or None for the cache) of
    ``dataset``: ``data_dir`` when given, else $JAXMLP_DATA_DIR (its ``dataset`` subfolder first), else
    the cache."""
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser(), "--data-dir"
    dataset_info(dataset)  # the name becomes a folder: only registry names
    env = os.environ.get("JAXMLP_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        return (root / dataset if (root / dataset).is_dir() else root), "$JAXMLP_DATA_DIR"
    return cache_root() / dataset, None


def cache_root() -> Path:
    """($XDG_CACHE_HOME or ~/.cache)/jaxmlp: the cache's datasets are its subfolders."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "jaxmlp"


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str = "mnist") -> Path:
    """The data folder for ``dataset``.

    Args:
        data_dir: the folder, if given.
        dataset: a registry name.

    Returns:
        ``data_dir`` if given, else $JAXMLP_DATA_DIR (its subfolder named ``dataset`` when that exists,
        else the variable's folder), else the cache ($XDG_CACHE_HOME or ~/.cache)/jaxmlp/<dataset>.
    """
    return locate(data_dir, dataset)[0]


def _candidates(folder: Path, stem: str) -> list[Path]:
    # The notebook names them train-images.idx3-ubyte; the distribution train-images-idx3-ubyte.gz.
    prefix, _, rest = stem.rpartition("-idx")
    dotted = f"{prefix}.idx{rest}"
    return [folder / f"{stem}.gz", folder / stem, folder / f"{dotted}.gz", folder / dotted]


def find(folder: Path, stem: str) -> Path | None:
    """The file ``stem`` names in folder (.gz or raw, dashed or dotted), or None."""
    return next((p for p in _candidates(folder, stem) if p.is_file()), None)


def ways_out(folder: Path, dataset: str, source: str | None) -> str:
    """The fixes for a folder lacking ``dataset``'s files, for the end of a one-line message; ``source``
    is where the folder's path came from (as ``locate`` returns it)."""
    flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    names = ", ".join(f"{stem}.gz" for stem in FILE_STEMS)
    if source is None:  # the cache: its files come from the network
        return (f"fetch them from a mirror you can reach with `jaxmlp download{flag} --mirror URL`, copy "
                f"{names} into {folder}, or use a folder holding them with --data-dir DIR or $JAXMLP_DATA_DIR")
    unset = "; or unset $JAXMLP_DATA_DIR to use the cache" if source == "$JAXMLP_DATA_DIR" else ""
    return (f"run `jaxmlp download{flag} --data-dir {folder}` to fetch them (add --mirror URL for another "
            f"source), copy {names} there, or give another folder with --data-dir DIR or "
            f"$JAXMLP_DATA_DIR{unset}")


def find_all(folder: Path, dataset: str = "mnist", source: str | None = "--data-dir") -> list[Path]:
    """The four files' paths of ``dataset`` in Dataset order; one-line DataError (naming the folder,
    where its path came from (``source``, as ``locate`` returns it), and the ways out) if any is missing."""
    where = f"data folder {folder}" + (" (from $JAXMLP_DATA_DIR)" if source == "$JAXMLP_DATA_DIR" else "")
    hint = ways_out(folder, dataset, source)
    if not folder.exists():
        raise DataError(f"{where} does not exist; {hint}")
    if not folder.is_dir():
        raise DataError(f"{where} is not a folder; {hint}")
    if not any(p.name != STAMP for p in folder.iterdir()):
        raise DataError(f"{where} is empty: {title(dataset)}'s four files are missing there; {hint}")
    paths = [find(folder, stem) for stem in FILE_STEMS]
    missing = [stem for stem, p in zip(FILE_STEMS, paths) if p is None]
    if missing:
        raise DataError(f"{where} has no {', '.join(missing)} (.gz or uncompressed); {hint}")
    return [p for p in paths if p is not None]  # none is: missing is empty
