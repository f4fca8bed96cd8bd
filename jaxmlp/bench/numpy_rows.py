"""The notebook's algorithm in NumPy (float64 weights, float32 inputs, its forward, backward and update
functions) and its timed row."""
from __future__ import annotations

import numpy as np

from .timing import _best_of, _best_per_step


def numpy_params(layer_sizes, seed: int = 42) -> list:
    """The notebook's init of the MLP ``layer_sizes`` with its own RNG (``RandomState(seed)``): float64
    ``randn * 0.01`` weights, zero (1, n) biases."""
    rng = np.random.RandomState(seed)
    return [{"W": rng.randn(a, b) * 0.01, "b": np.zeros((1, b))} for a, b in zip(layer_sizes[:-1], layer_sizes[1:])]


def numpy_step(params: list, x: np.ndarray, y_onehot: np.ndarray, lr: float) -> float:
    """One minibatch of the notebook: forward (ReLU, softmax), its epsilon cross-entropy, the
    hand-written backward pass, the in-place SGD update of ``params`` with step size ``lr``. Returns
    the batch loss.

    Args:
        params: ``numpy_params``'s list of {"W", "b"} float64 arrays, updated in place.
        x: (B, D) float32 inputs.
        y_onehot: (B, C) float64 one-hot labels.
        lr: learning rate.
    """
    acts, zs = [x], []
    for i, p in enumerate(params):
        z = np.dot(acts[-1], p["W"]) + p["b"]
        zs.append(z)
        if i < len(params) - 1:
            acts.append(np.maximum(0, z))
        else:
            e = np.exp(z - np.max(z, axis=1, keepdims=True))
            acts.append(e / np.sum(e, axis=1, keepdims=True))
    m = x.shape[0]
    loss = -np.sum(y_onehot * np.log(acts[-1] + 1e-8)) / m
    dz = acts[-1] - y_onehot
    for i in range(len(params) - 1, -1, -1):
        dW = np.dot(acts[i].T, dz) / m
        db = np.sum(dz, axis=0, keepdims=True) / m
        if i > 0:
            dz = np.dot(dz, params[i]["W"].T) * (zs[i - 1] > 0)
        params[i]["W"] -= lr * dW
        params[i]["b"] -= lr * db
    return float(loss)


def _host_shuffle(images: np.ndarray, targets: np.ndarray, repeats: int):
    """(seconds of one epoch's NumPy shuffle, shuffled float32 inputs, shuffled targets): the notebook's
    ``astype(float32) / 255`` preprocessing, then ``x[perm]`` as its epoch loop does on the host."""
    x = images.astype(np.float32) / np.float32(255.0)
    rng = np.random.RandomState(0)

    def shuffle():
        idx = rng.permutation(x.shape[0])
        return x[idx], targets[idx]

    shuffle_s = _best_of(shuffle, repeats)
    return (shuffle_s, *shuffle())


def time_numpy(images: np.ndarray, y: np.ndarray, layer_sizes, batch_size: int, lr: float, steps: int,
               repeats: int = 3) -> float:
    """Seconds per epoch of the notebook's NumPy loop on uint8 ``images`` (N, D), int labels ``y`` (N,):
    the epoch's shuffled copy of the data plus ceil(N / batch_size) steps of ``lr`` on the MLP
    ``layer_sizes``, timed over ``steps`` steps, best of ``repeats``. The notebook's float32 inputs and
    float64 one-hot labels live only inside this call."""
    n = images.shape[0]
    # float64 one-hot labels, as the notebook's np.eye
    shuffle_s, xs, ys = _host_shuffle(images, np.eye(layer_sizes[-1])[y], repeats)
    params = numpy_params(layer_sizes)
    steps = max(1, min(steps, n // batch_size))
    for i in range(min(3, steps)):  # warm-up: BLAS threads, page faults
        numpy_step(params, xs[i * batch_size:(i + 1) * batch_size], ys[i * batch_size:(i + 1) * batch_size], lr)

    def run(a, b):
        for i in range(a, b):
            s = slice(i * batch_size, (i + 1) * batch_size)
            numpy_step(params, xs[s], ys[s], lr)

    return shuffle_s + _best_per_step(run, steps, repeats) * -(-n // batch_size)
