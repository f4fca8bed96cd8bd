"""A dataset's four arrays, and the pure preprocessing steps of the notebook: flatten, normalize, one-hot,
and selecting a subset of the classes. Each checks its input where it enters and says what to do in one
line."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Dataset(NamedTuple):
    """A train/test split as uint8 arrays.

    Attributes:
        x_train: (N, rows, cols) uint8 training images.
        y_train: (N,) uint8 training labels.
        x_test: (M, rows, cols) uint8 test images.
        y_test: (M,) uint8 test labels.
    """
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ---------------------------------------------------------------- choosing classes


def check_classes(classes: Sequence[int], *, what: str = "classes") -> list[int]:
    """Check a list of class labels.

    Args:
        classes: the labels, two or more distinct integers >= 0.
        what: the caller's name for the argument (e.g. ``TrainConfig.classes``), named in the error.

    Returns:
        The labels as a list of ints; ValueError naming ``what`` for anything else.
    """
    try:
        ints = [int(c) for c in classes]
        integral = all(i == c for i, c in zip(ints, classes))
    except (TypeError, ValueError):
        integral = False
    if not integral:
        raise ValueError(f"{what}: need two or more distinct non-negative integer labels, got {classes!r}")
    if len(set(ints)) != len(ints) or len(ints) < 2 or min(ints) < 0:
        raise ValueError(f"{what}: need two or more distinct non-negative labels, got {ints}")
    return ints


def _checked_split(data, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split of data as NumPy arrays; ValueError naming the field unless the
    labels are (N,) integers >= 0 for its N images."""
    x, y = np.asarray(getattr(data, images)), np.asarray(getattr(data, labels))
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise ValueError(f"select_classes: data.{labels} must be 1-D integer labels, got shape {y.shape} "
                         f"and dtype {y.dtype}")
    n = x.shape[0] if x.ndim else 0
    if n != len(y):
        raise ValueError(f"select_classes: data.{labels} has {len(y)} labels but data.{images} has {n} "
                         f"images; give one label per image")
    if y.size and y.min() < 0:
        bad = int(np.argmax(y < 0))
        raise ValueError(f"select_classes: data.{labels}[{bad}] is {y[bad]}; labels must be >= 0")
    return x, y


def select_classes(data: Dataset, classes: Sequence[int]) -> Dataset:
    """The examples of data labelled one of classes, relabelled by position: with classes (5, 6, 7, 8, 9)
    a 5 becomes 0 and a 9 becomes 4. A smaller task, e.g. for fine-tuning a model on a digit subset.

    Args:
        data: a ``Dataset``.
        classes: the labels to keep, in the order that numbers them.

    Returns:
        A ``Dataset`` of the kept examples with labels ``0..len(classes)-1``. ValueError (one line naming
        the argument) for a bad classes list, a class no training example has, or labels that are not
        one non-negative integer per image.
    """
    classes = check_classes(classes, what="select_classes: classes")
    if not all(hasattr(data, field) for field in Dataset._fields):
        raise ValueError(f"select_classes: data must be a Dataset (x_train, y_train, x_test, y_test), "
                         f"got {type(data).__name__}")
    order = np.argsort(classes)
    known = np.asarray(classes, np.int64)[order]
    parts = []
    for images, labels in (("x_train", "y_train"), ("x_test", "y_test")):
        x, y = _checked_split(data, images, labels)
        # Each label's place among the sorted classes: no lookup table as long as the largest label.
        at = np.minimum(np.searchsorted(known, y), len(known) - 1)
        keep = known[at] == y
        parts += [x[keep], order[at[keep]].astype(y.dtype)]
    present = set(np.unique(parts[1]).tolist())
    missing = [c for i, c in enumerate(classes) if i not in present]
    if missing:
        raise ValueError(f"select_classes: classes: no training example is labelled {missing[0]}")
    return Dataset(*parts)


# ---------------------------------------------------------------- preprocessing (pure, jit-friendly)


def flatten(images) -> jnp.ndarray:
    """images (N, H, W) or (N, H, W, C) -> (N, H*W*C), same dtype, row-major (the notebook's reshape).

    Args:
        images: (N, H, W) or (N, H, W, C) array of any dtype.

    Returns:
        The (N, H*W*C) array. ValueError for any other rank: one image needs a batch axis first
        (``images[None]``), and an (N, D) array is already flat.
    """
    shape = np.shape(images)
    if len(shape) not in (3, 4):
        raise ValueError(f"flatten: expected a batch of images (N, H, W) or (N, H, W, C), got shape {shape}; "
                         f"for one image pass images[None], and an (N, D) array is already flat (skip flatten)")
    images = jnp.asarray(images)
    return jnp.reshape(images, (shape[0], math.prod(shape[1:])))


# The 256 possible pixel values divided by 255 in float32 by NumPy (correctly rounded, as in the
# notebook's ``astype(float32) / 255.0``). XLA's CPU float32 division is not correctly rounded (it
# differs in the last bit for about half the values), so normalizing is a table lookup instead.
_PIXEL_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)


def normalize(images, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 images, any shape -> values in [0, 1], same shape: exactly the notebook's
    ``astype(float32) / 255.0``, then cast to dtype (so float64 gives the notebook-exact mode the seed's
    very values).

    Args:
        images: uint8 pixels, any shape (a NumPy or JAX array).
        dtype: the result's dtype.

    Returns:
        The pixels divided by 255, same shape, in ``dtype``. ValueError for images of another dtype.
    """
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
    """(N,) integer labels -> (N, num_classes) rows of dtype.

    Args:
        labels: (N,) integer class indices.
        num_classes: the rows' width.
        dtype: the rows' dtype.

    Returns:
        (N, num_classes) one-hot rows; a label outside ``[0, num_classes)`` gives a zero row.
    """
    labels = jnp.asarray(labels)
    return (labels[..., None] == jnp.arange(num_classes)).astype(dtype)
