"""Loading a dataset: find its folder, fill the cache from a mirror when that is where it lives, check the
files against the registry and against each other, and return them as a Dataset of uint8 arrays."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DataError, DownloadError
from .fetch import download
from .idx import read_idx
from .locate import find, find_all, locate, ways_out
from .preprocess import Dataset
from .registry import FILE_STEMS, DatasetInfo, dataset_info, title
from .verify import cached_digests, check_identity, identify, verified


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


def _fill_cache(folder: Path, info: DatasetInfo, may_download: bool, mirrors, progress: bool) -> None:
    """Make the cache folder hold info's four files, each matching the registry's checksums:
    download what is missing or does not match; one-line DataError with the ways out if that fails."""
    paths = [find(folder, stem) for stem in FILE_STEMS]
    bad = [p for p, spec in zip(paths, info.files) if p is not None and not verified(p, spec)]
    if not bad and None not in paths:
        return
    try:
        if not may_download:
            raise DownloadError("downloading is off")
        download(info.name, folder, mirrors=mirrors, progress=progress)
    except DownloadError as err:
        flag = "" if info.name == "mnist" else f" --dataset {info.name}"
        if not bad:
            raise DownloadError(f"no {title(info.name)} data in {folder} and it could not be fetched "
                                f"({err}); {ways_out(folder, info.name, None)}") from None
        stem = FILE_STEMS[paths.index(bad[0])]
        other = identify(cached_digests([bad[0]])[0], stem, info.name)
        held = f" (it is {title(other)}'s)" if other else ""
        raise DownloadError(f"{bad[0]} does not match {title(info.name)}'s published checksum{held} and "
                            f"could not be fetched again ({err}); delete it and run `jaxmlp download{flag}` "
                            f"(add --mirror URL for another source), or give a folder with --data-dir DIR "
                            f"or $JAXMLP_DATA_DIR") from None


def _ensure(data_dir, dataset: str, num_classes: int | None, may_download: bool, mirrors,
            progress: bool) -> Dataset:
    info = dataset_info(dataset)
    folder, source = locate(data_dir, dataset)
    if source is None:
        _fill_cache(folder, info, may_download, mirrors, progress)
    paths = find_all(folder, dataset, source)
    data = _load_paths(paths, info.num_classes if num_classes is None else num_classes)
    if source is not None:  # the cache's files were checked against the registry above
        check_identity(paths, dataset)
    return data


def load_dataset(data_dir: str | os.PathLike | None = None, num_classes: int | None = None, *,
                 dataset: str | None = None, download: bool = True,
                 mirrors: Sequence[str] | None = None, progress: bool = False) -> Dataset:
    """Load a dataset's four MNIST-layout IDX files and check they form a dataset.

    ``load_dataset(folder)`` (no ``dataset``) loads exactly that folder, whatever it holds. Otherwise the
    folder is found as the CLI finds it (see jaxmlp.data): ``data_dir``, else
    ``$JAXMLP_DATA_DIR`` (its ``DATASET/`` subfolder if present), else the cache, downloaded there on
    first use unless ``download=False``; ``dataset`` defaults to "mnist" and a folder holding another
    registered dataset's files is refused.

    Args:
        data_dir: the folder to load; None (or "") finds it as the CLI does.
        num_classes: labels must lie in ``[0, num_classes)``; None: the dataset's (10).
        dataset: a registered dataset's name ("mnist", "fashion-mnist", "kmnist"); None loads
            ``data_dir`` as it is, or "mnist" when no folder is given.
        download: whether a missing or stale cache may be filled from the mirrors.
        mirrors: base URLs that replace the registry's for that download.
        progress: draw the download's progress bar on a terminal's stderr.

    Returns:
        A ``Dataset`` of uint8 images (N, rows, cols) and labels (N,) in ``[0, num_classes)``.
        DataError/IDXError (ValueErrors, one line) name the folder or file for anything missing,
        malformed or inconsistent.
    """
    if data_dir is not None and os.fspath(data_dir) != "" and dataset is None:
        paths = find_all(Path(data_dir).expanduser())
        return _load_paths(paths, 10 if num_classes is None else num_classes)
    return _ensure(data_dir, dataset or "mnist", num_classes, download, mirrors, progress)


def ensure_dataset(data_dir: str | os.PathLike | None, dataset: str = "mnist",
                   mirrors: Sequence[str] | None = None, progress: bool = False, *,
                   download: bool = True) -> Dataset:
    """Find the folder of ``dataset`` (data_dir, else as jaxmlp.data says), check it, and load it.

    Only the default cache is downloaded into (first use, or a file there that no longer matches the
    registry's SHA-256). An explicit folder (data_dir or $JAXMLP_DATA_DIR) is never written to (its
    hash stamp lives in the cache): if it lacks files, or holds another registered dataset's, a
    one-line DataError says what to do.

    Args:
        data_dir: the folder, or None to find it.
        dataset: a registry name.
        mirrors: as for ``load_dataset``.
        progress: as for ``load_dataset``.
        download: whether the cache may be filled from the mirrors.

    Returns:
        The ``Dataset``.
    """
    return _ensure(data_dir, dataset, None, download, mirrors, progress)
