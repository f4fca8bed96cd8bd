"""The MLP: params PyTree, initialisation, forward pass.

Params are a list with one ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` dict per layer, so any depth is
just a longer list and every JAX transformation (grad, jit, vmap, tree_map) sees an ordinary PyTree.
Hidden layers use an elementwise activation (ReLU by default, see ``ACTIVATIONS``); the last layer is
linear and returns logits.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import activations
from .activations import gelu, relu  # noqa: F401  (re-exported: model.relu, model.gelu)

Params = list  # list[dict[str, jax.Array]]

INIT_SCHEMES = ("notebook", "he", "glorot")
# The one default init, here and for TrainConfig, the MLP value and the CLI: He's N(0, 2 / fan_in) keeps
# a ReLU network's activations at one scale through its layers, so any depth or width trains from the
# first step. The notebook's N(0, 1) * 0.01 ("notebook") shrinks the signal a hundredfold per layer:
# it trains the notebook's net more slowly (seed ensembles ~91% after an epoch where He gets ~95%);
# ``--notebook-exact`` and ``init_params_numpy`` reproduce it bit for bit.
DEFAULT_INIT = "he"
ACTIVATIONS = activations.NAMES


def _scale_draw(draw: jax.Array, fan_in: int, fan_out: int, scheme: str, dtype) -> jax.Array:
    """A layer's weights from ``draw``, its flat draws (N(0, 1); U(-a, a) for glorot)."""
    if scheme == "notebook":
        return 0.01 * draw.reshape(fan_in, fan_out)
    if scheme == "he":
        return jnp.sqrt(2.0 / fan_in).astype(dtype) * draw.reshape(fan_in, fan_out)
    return draw.reshape(fan_in, fan_out)  # glorot: drawn in range already


def _check_scheme(scheme: str) -> None:
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")


def _glorot_limit(fan_in: int, fan_out: int) -> float:
    return float(np.sqrt(6.0 / (fan_in + fan_out)))


def _standard_draws(keys: jax.Array, size: int, scheme: str, dtype, limits=None) -> jax.Array:
    # Flat draws of one length for every key, in one program. With JAX's counter-based threefry the
    # first n values of a flat draw of any length (and a draw's (m, n) reshape) are the values a
    # (m, n)-shaped draw gives, so the params are those of per-layer draws, while XLA compiles one
    # sampler instead of one per layer shape (~0.3 s each on CPU, most of a cold start's init).
    if scheme == "glorot":
        limits = jnp.asarray(limits, dtype)
        return jax.vmap(lambda k, a: jax.random.uniform(k, (size,), dtype, -a, a))(keys, limits)
    return jax.vmap(lambda k: jax.random.normal(k, (size,), dtype))(keys)


def init_layer(key: jax.Array, fan_in: int, fan_out: int, scheme: str = DEFAULT_INIT, dtype=jnp.float32) -> dict:
    """One dense layer's ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` with zero biases.

    Args:
        key: PRNG key for the weights.
        fan_in, fan_out: the layer's input and output widths.
        scheme: he (``DEFAULT_INIT``, the default everywhere): N(0, 2 / fan_in), suited to ReLU;
            notebook: N(0, 1) * 0.01 as in the seed; glorot: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
        dtype: the leaves' dtype (float64 needs x64 enabled).

    Returns:
        ``{"W": (fan_in, fan_out), "b": (fan_out,)}``.
    """
    _check_scheme(scheme)
    draw = _standard_draws(key[None], fan_in * fan_out, scheme, dtype, [_glorot_limit(fan_in, fan_out)])[0]
    return {"W": _scale_draw(draw, fan_in, fan_out, scheme, dtype), "b": jnp.zeros((fan_out,), dtype)}


def init_params(key: jax.Array, layer_sizes: Sequence[int], scheme: str = DEFAULT_INIT,
                dtype=jnp.float32) -> Params:
    """Params for an MLP with ``layer_sizes = [784, 128, 64, 10]`` (input, hidden..., output).

    Args:
        key: PRNG key; one key per layer is split off it (layer i's weights are
            ``init_layer(keys[i], ...)``'s), so the same key always gives the same params.
        layer_sizes: input width, hidden widths..., number of classes; at least two positive sizes.
        scheme: one of ``INIT_SCHEMES`` (see ``init_layer``); ``DEFAULT_INIT`` ("he"), as training's.
        dtype: the leaves' dtype (float64 needs x64 enabled).

    Returns:
        A list of one ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` dict per layer, biases zero.
    """
    sizes = [int(s) for s in layer_sizes]
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"layer_sizes must hold >= 2 positive sizes, got {list(layer_sizes)}")
    _check_scheme(scheme)
    fans = tuple(zip(sizes[:-1], sizes[1:]))
    return _init_program(key, fans, scheme, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_program(key: jax.Array, fans: tuple, scheme: str, dtype) -> Params:
    # One program (op-by-op execution would compile a dozen). The barrier keeps XLA from folding the
    # scale into the sampler's own constants (0.01 * sqrt(2) * erfinv(u)), which would change the
    # weights' last bits from those of the plain per-layer draws.
    keys = jax.random.split(key, len(fans))
    draws = _standard_draws(keys, max(m * n for m, n in fans), scheme, dtype, [_glorot_limit(m, n) for m, n in fans])
    draws = jax.lax.optimization_barrier(draws)
    return [{"W": _scale_draw(draws[i, : m * n], m, n, scheme, dtype), "b": jnp.zeros((n,), dtype)}
            for i, (m, n) in enumerate(fans)]


def init_params_numpy(seed, layer_sizes: Sequence[int], dtype=np.float64) -> Params:
    """The notebook's exact initialisation: ``np.random.seed(seed)``, then W1, W2, ... drawn in order
    with ``np.random.randn(fan_in, fan_out) * 0.01`` and zero biases.

    NumPy's legacy global RNG is a RandomState, so ``RandomState(seed)`` draws exactly what
    ``np.random.seed(seed)`` would, without touching it.

    Args:
        seed: an int, or a ``np.random.RandomState`` to draw from (advanced in place: the notebook's
            per-epoch permutations continue its stream).
        layer_sizes: as in ``init_params``.
        dtype: the leaves' dtype (float64, the notebook's).

    Returns:
        A list of one ``{"W", "b"}`` dict of jax arrays per layer.
    """
    rng = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
    params = []
    for m, n in zip(layer_sizes[:-1], layer_sizes[1:]):
        W = rng.randn(m, n) * 0.01
        params.append({"W": jnp.asarray(W, dtype), "b": jnp.zeros((n,), dtype)})
    return params


def layer_sizes(params: Params) -> list[int]:
    """The layer sizes of ``params``.

    Args:
        params: a list of ``{"W", "b"}`` layers.

    Returns:
        ``[fan_in of layer 0, fan_out of each layer...]``, as ``init_params`` takes them.
    """
    return [int(params[0]["W"].shape[0])] + [int(p["W"].shape[1]) for p in params]


def check_params(params: Params) -> None:
    """Raise one ValueError naming ``params`` unless it is a non-empty list of ``{"W": (fan_in, fan_out),
    "b": (fan_out,)}`` layers whose widths chain. Reads shapes only, so it costs nothing under jit.

    Args:
        params: the params to check.
    """
    if isinstance(params, dict):
        raise ValueError("params: expected a list of layers [{'W': ..., 'b': ...}, ...], got a single layer "
                         "dict; wrap it in a list")
    if not isinstance(params, (list, tuple)) or not params:
        raise ValueError(f"params: expected a non-empty list of {{'W', 'b'}} layers, got {type(params).__name__}")
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or "W" not in layer or "b" not in layer:
            raise ValueError(f"params: layer {i} must be a dict with 'W' and 'b', got {type(layer).__name__}")
        w, b = jnp.shape(layer["W"]), jnp.shape(layer["b"])
        if len(w) != 2 or b != w[1:]:
            raise ValueError(f"params: layer {i} has W {w} and b {b}; expected W (fan_in, fan_out), b (fan_out,)")
        if i and w[0] != jnp.shape(params[i - 1]["W"])[1]:
            raise ValueError(f"params: layer {i}'s W takes {w[0]} inputs but layer {i - 1} gives "
                             f"{jnp.shape(params[i - 1]['W'])[1]} outputs")


def check_inputs(params: Params, x: jax.Array) -> None:
    """``check_params(params)``, then one ValueError naming ``x`` unless x (N, D) has D = the first fan_in.

    Args:
        params: the params to check.
        x: (N, D) inputs; a single example ``(D,)`` passes too (``jax.vmap`` over rows sees those).
    """
    check_params(params)
    fan_in = jnp.shape(params[0]["W"])[0]
    shape = jnp.shape(x)
    if len(shape) not in (1, 2) or shape[-1] != fan_in:
        raise ValueError(f"x: expected shape (N, {fan_in}) to match the first layer's fan_in {fan_in}, "
                         f"got {shape}")


def activation_fn(activation: str | Callable) -> Callable:
    """The elementwise function for ``activation``.

    Args:
        activation: a name from ``ACTIVATIONS``, or a callable.

    Returns:
        The function (a callable is returned as is); ValueError for an unknown name.
    """
    if callable(activation):
        return activation
    if isinstance(activation, str) and activation in activations.REGISTRY:
        return activations.REGISTRY[activation].fn
    raise ValueError(f"activation: unknown {activation!r}; choose one of {', '.join(ACTIVATIONS)} or pass a callable")


def softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """Stable softmax of ``logits`` along ``axis``: subtracting the row max keeps exp from overflowing.

    Args:
        logits: scores, any shape.
        axis: the axis that sums to 1.

    Returns:
        Probabilities of the logits' shape and dtype.
    """
    z = logits - jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
    e = jnp.exp(z)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """Stable log-softmax of ``logits`` along ``axis``: ``z - max - log(sum(exp(z - max)))``, finite even
    when softmax underflows.

    Args:
        logits: scores, any shape.
        axis: the axis normalised over.

    Returns:
        Log-probabilities of the logits' shape and dtype.
    """
    z = logits - jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


def dropout_mask(key: jax.Array, shape: tuple, rate: float) -> jax.Array:
    """The bool mask of units ``inverted_dropout(key, x, rate)`` keeps, for ``x`` of ``shape``.

    Args:
        key: PRNG key of the draw.
        shape: the units' shape.
        rate: the probability of dropping a unit.

    Returns:
        A bool array of ``shape``, True where a unit is kept.
    """
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def inverted_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout of ``x``: zero each unit with probability ``rate`` and scale survivors by
    1/(1-rate), so the expectation is unchanged and evaluation needs no rescaling.

    Args:
        key: PRNG key of the mask (``dropout_mask``'s).
        x: activations, any shape.
        rate: the probability of dropping a unit, in [0, 1).

    Returns:
        ``x`` with the dropped units zeroed and the kept ones scaled, same shape and dtype.
    """
    keep = dropout_mask(key, x.shape, rate)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def forward(params: Params, x: jax.Array, *, key: jax.Array | None = None, dropout: float = 0.0,
            activation: str | Callable = "relu") -> jax.Array:
    """Logits ``(N, C)`` of the MLP ``params`` (a list of layers) for inputs ``x`` ``(N, D)``.

    Args:
        params: a list of ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` layers (``init_params``').
        x: (N, D) inputs of the params' dtype.
        key, dropout: inverted dropout at rate ``dropout`` after each hidden activation, layer i's mask
            drawn from ``fold_in(key, i)``; only when a ``key`` is given and ``dropout > 0``, so
            evaluation calls (no key) are deterministic.
        activation: the hidden layers' activation, a name from ``ACTIVATIONS`` or an elementwise callable.

    Returns:
        (N, C) logits (no softmax).
    """
    check_inputs(params, x)
    act = activation_fn(activation)
    h = x
    for i, layer in enumerate(params[:-1]):
        h = act(h @ layer["W"] + layer["b"])
        if key is not None and dropout > 0:
            h = inverted_dropout(jax.random.fold_in(key, i), h, dropout)
    last = params[-1]
    return h @ last["W"] + last["b"]


def forward_intermediates(params: Params, x: jax.Array, *, activation: str | Callable = "relu") -> dict:
    """The notebook's forward pass of ``params`` on ``x`` (N, D) with everything it keeps for backprop.

    Args:
        params: a list of ``{"W", "b"}`` layers.
        x: (N, D) inputs.
        activation: the hidden layers' activation, a name from ``ACTIVATIONS`` or a callable.

    Returns:
        ``{"A0": x, "Z1": ..., "A1": ..., ..., "ZL": logits, "AL": softmax probs}`` with
        L = len(params). Hidden A's are ``activation(Z)``, the last A is softmax(Z). No dropout.
    """
    check_inputs(params, x)
    act = activation_fn(activation)
    cache = {"A0": x}
    a = x
    L = len(params)
    for i, layer in enumerate(params, start=1):
        z = a @ layer["W"] + layer["b"]
        a = act(z) if i < L else softmax(z)
        cache[f"Z{i}"], cache[f"A{i}"] = z, a
    return cache


def predict(params: Params, x: jax.Array, *, activation: str | Callable = "relu") -> jax.Array:
    """Predicted classes of the MLP ``params``: argmax of ``forward(params, x, activation=activation)``.

    Args:
        params: a list of ``{"W", "b"}`` layers.
        x: (N, D) inputs.
        activation: as in ``forward``.

    Returns:
        (N,) int32 class indices.
    """
    return jnp.argmax(forward(params, x, activation=activation), axis=-1)
