"""Checks on the values that enter the library from a caller: one ValueError naming the argument each.

Shapes are checked where a function is traced (``model.check_inputs``, ``losses.check_labels``); what
only the values can tell (labels out of range, one-hot labels where class indices are expected, empty
sets, a saved state of another model) is checked here, once, on the host, where data enters ``fit``,
``jaxmlp.train``, ``fit_notebook``, ``evaluate`` and ``predict``: never inside the compiled loop.
"""
from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["check_labels", "check_dataset", "check_inputs", "check_state", "check_count",
           "check_params", "check_loss_fn"]


def _array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged lists
        raise ValueError(f"{name}: expected an array, got {type(value).__name__} ({err})") from None


def check_labels(labels: Any, num_classes: int | None = None, rows: int | None = None,
                 name: str = "labels") -> np.ndarray:
    """``labels`` as an integer array (N,), checked: integers (not one-hot, not floats), ``rows`` of
    them when given, each in ``[0, num_classes)`` (``num_classes`` None: only ``>= 0``).

    Args:
        labels: class indices (an array, a device array or a Python list).
        num_classes: the model's number of outputs, or None.
        rows: the number of examples the labels belong to, or None.
        name: what the error calls the argument (``data.y_train``, ``y``).
    """
    y = _array(labels, name)
    if y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind in "fbiu":
        raise ValueError(f"{name}: expected class indices (N,), got one-hot or scores of shape {y.shape}; "
                         f"pass {name.split('.')[-1]}.argmax(axis=1)")
    if y.ndim != 1:
        raise ValueError(f"{name}: expected class indices of shape (N,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    if rows is not None and len(y) != rows:
        raise ValueError(f"{name}: {len(y)} labels for {rows} examples")
    if len(y) and y.min() < 0:
        raise ValueError(f"{name}: label {int(y.min())} is negative; labels are class indices 0..C-1")
    if len(y) and num_classes is not None and y.max() >= num_classes:
        raise ValueError(f"{name}: label {int(y.max())} is out of range for {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return y


def check_dataset(data: Any, num_classes: int | None = None, name: str = "data"):
    """``data`` as a ``Dataset`` of NumPy arrays, checked: four arrays, uint8 images (N, ...) with N
    integer labels in range for train and test, neither set empty, both of one image shape.

    Args:
        data: a ``data.Dataset`` (or anything with ``x_train``, ``y_train``, ``x_test``, ``y_test``).
        num_classes: the model's number of outputs (None: labels need only be >= 0).
        name: what the error calls the argument.
    """
    from .data import Dataset

    if not all(hasattr(data, a) for a in Dataset._fields):
        raise ValueError(f"{name}: expected a Dataset (x_train, y_train, x_test, y_test), got {type(data).__name__}")
    arrays = {}
    for split, what in (("train", "training"), ("test", "test")):
        x = _array(getattr(data, f"x_{split}"), f"{name}.x_{split}")
        if x.ndim < 2:
            raise ValueError(f"{name}.x_{split}: expected images (N, H, W) or (N, D), got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name}.x_{split}: the {what} set is empty")
        if x.dtype != np.uint8:
            raise ValueError(f"{name}.x_{split}: expected uint8 pixels 0..255, got dtype {x.dtype}")
        y = check_labels(getattr(data, f"y_{split}"), num_classes, x.shape[0], f"{name}.y_{split}")
        arrays[split] = (x, y)
    if arrays["train"][0].shape[1:] != arrays["test"][0].shape[1:]:
        raise ValueError(f"{name}.x_test: images of shape {arrays['test'][0].shape[1:]}, the training images are "
                         f"{arrays['train'][0].shape[1:]}")
    return Dataset(*arrays["train"], *arrays["test"])


def check_inputs(x: Any, name: str = "x") -> Any:
    """``x`` checked as model inputs: a non-empty (N, D) array of floats (pixels scaled to [0, 1]).

    Args:
        x: the inputs (an array, a device array or a Python list).
        name: what the error calls the argument.
    """
    x = x if isinstance(x, jax.Array) else _array(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected inputs of shape (N, D), got shape {tuple(x.shape)}; flatten images "
                         f"with data.flatten")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no examples (shape {tuple(x.shape)})")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected float inputs scaled to [0, 1], got dtype {x.dtype}; scale pixels "
                         f"with data.normalize")
    return x


def _shapes(tree: Any) -> dict:
    def dtype(leaf):
        return np.dtype(leaf.dtype).name if hasattr(leaf, "dtype") else np.asarray(leaf).dtype.name

    def shape(leaf):
        return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): (shape(leaf), dtype(leaf)) for path, leaf in leaves}


def check_state(state: Any, template: Any, name: str = "resume") -> None:
    """ValueError unless ``state`` has the structure, shapes and dtypes of ``template`` (a state of the
    model the config builds, e.g. ``runs.state_template``): a saved state of another model is refused.

    Args:
        state: the state to continue from (a ``TrainState``).
        template: its expected shapes (arrays or ``jax.ShapeDtypeStruct`` s).
        name: what the error calls the argument.
    """
    have, want = _shapes(state), _shapes(template)
    for path in want:
        if path not in have:
            raise ValueError(f"{name}: the state has no {path}; it is not a state of the configured model")
        if have[path] != want[path]:
            (shape, dtype), (want_shape, want_dtype) = have[path], want[path]
            raise ValueError(f"{name}: the state's {path} is {dtype} {shape}, the configured model's is "
                             f"{want_dtype} {want_shape}: a state of another model (check hidden, arch, dtype)")
    extra = sorted(set(have) - set(want))
    if extra:
        raise ValueError(f"{name}: the state has {extra[0]}, which the configured model has not")


def check_count(value: Any, name: str) -> int:
    """``value`` as a positive ``int``: any integer-like number (``np.int64(32)``, a 0-d integer array)
    is accepted through ``operator.index``; bools, floats (``2.5``), strings and values below 1 are not.

    Args:
        value: the count given (``batch_size``, ``epochs``, ``chunk_steps``).
        name: what the error calls the argument.
    """
    try:
        count = None if isinstance(value, (bool, np.bool_)) else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return count


def check_params(params: Any, name: str = "params") -> None:
    """ValueError unless every leaf of ``params`` is a number or an array of numbers (bool, int, float,
    complex); the message names the first other leaf by its path (``params['name']``).

    Args:
        params: a PyTree of arrays.
        name: what the error calls the argument.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, (int, float, complex)):
            continue
        try:
            kind = np.dtype(dtype).kind if dtype is not None else None
        except TypeError:  # a typed PRNG key's dtype, which NumPy has no name for
            kind = None
        if kind not in ("b", "i", "u", "f", "c"):
            raise ValueError(f"{name}{jax.tree_util.keystr(path)}: {_short(leaf)} is not an array of numbers; a "
                             f"params PyTree holds only arrays (keep names and settings outside it, e.g. in "
                             f"loss_fn's closure)")


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_loss_fn(loss_fn: Callable, name: str = "loss_fn") -> None:
    """ValueError unless ``loss_fn`` can be called as ``loss_fn(params, x, y, key)`` (four positional
    arguments); a callable whose signature Python cannot read is let through.

    Args:
        loss_fn: the user's loss.
        name: what the error calls the argument.
    """
    if not callable(loss_fn):
        raise ValueError(f"{name}: expected a function (params, x, y, key) -> loss, got {type(loss_fn).__name__}")
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, None, None)
    except TypeError:
        raise ValueError(f"{name}: must take (params, x, y, key), got {getattr(loss_fn, '__name__', 'a callable')}"
                         f"{signature}; add the key argument even if unused (it is the step's PRNG key, for "
                         f"dropout)") from None
