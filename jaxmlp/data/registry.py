"""The datasets jaxmlp knows: their four files, the SHA-256 sums that verify them, mirrors and metadata."""
from __future__ import annotations

from typing import NamedTuple

from .errors import DataError


class RemoteFile(NamedTuple):
    """One file as the mirrors serve it, and how to check it. At least one checksum is set; every one
    set is checked.

    Attributes:
        name: the file name on the mirrors (``train-images-idx3-ubyte.gz``).
        content_sha256: SHA-256 of the decompressed IDX bytes (mirrors may re-compress, so the .gz
            bytes can differ between them).
        gzip_sha256: SHA-256 of the .gz bytes as served, for datasets whose decompressed contents have
            no established checksum.
    """
    name: str
    content_sha256: str | None = None
    gzip_sha256: str | None = None


class DatasetInfo(NamedTuple):
    """A known dataset.

    Attributes:
        name: the dataset's name (``--dataset``).
        files: the four ``RemoteFile`` s: train images, train labels, test images, test labels.
        mirrors: base URLs, tried in order; a file's URL is ``base + "/" + name``.
        num_classes: the number of labels.
        class_names: one name per label.
        homepage: where the dataset is described.
        license: its license.
    """
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


def dataset_info(dataset: str) -> DatasetInfo:
    """The registry's entry for the dataset named ``dataset``; DataError listing the known ones if none."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})") from None


_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "kmnist": "KMNIST"}


def title(dataset: str) -> str:
    """How messages write the dataset's name ("Fashion-MNIST" for "fashion-mnist")."""
    return _TITLES.get(dataset, dataset)
