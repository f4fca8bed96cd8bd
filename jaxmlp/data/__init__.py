"""Datasets in MNIST's IDX layout: parse, locate, download, verify, preprocess.

One concern a module: ``idx`` (the bounded IDX reader and writer), ``images`` (predict's input files),
``registry`` (the known datasets and their SHA-256 sums), ``locate`` (where the files live), ``verify``
(checksums, remembered in stamps), ``fetch`` (downloads from mirrors), ``load`` (load_dataset,
ensure_dataset) and ``preprocess`` (Dataset, flatten, normalize, one_hot, select_classes). Every public
name is importable from ``jaxmlp.data``.

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

Every error is a ValueError of one line that names the folder, file or argument at fault and what to do.
"""
from .errors import DataError, DownloadError, IDXError
from .fetch import download
from .idx import IDX_DTYPES, MAX_ARRAY_BYTES, parse_idx, read_idx, write_idx
from .images import read_images
from .load import ensure_dataset, load_dataset
from .locate import resolve_data_dir
from .preprocess import Dataset, check_classes, flatten, normalize, one_hot, select_classes
from .registry import DATASETS, FILE_STEMS, DatasetInfo, RemoteFile

__all__ = [
    "DATASETS", "DataError", "Dataset", "DatasetInfo", "DownloadError", "FILE_STEMS", "IDXError", "IDX_DTYPES",
    "MAX_ARRAY_BYTES", "RemoteFile", "check_classes", "download", "ensure_dataset", "flatten", "load_dataset",
    "normalize", "one_hot", "parse_idx", "read_idx", "read_images", "resolve_data_dir", "select_classes",
    "write_idx",
]
