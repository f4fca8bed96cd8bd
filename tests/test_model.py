"""Model: params PyTree, initialisation, forward pass, activations, softmax, dropout, shape checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxmlp.model import (
    ACTIVATIONS,
    forward,
    forward_intermediates,
    init_layer,
    init_params,
    init_params_numpy,
    inverted_dropout,
    layer_sizes,
    log_softmax,
    predict,
    relu,
    softmax,
)

# float64 references throughout (see conftest's x64 fixture).
pytestmark = pytest.mark.usefixtures("x64")


@pytest.mark.parametrize("scheme", ["notebook", "he", "glorot"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_shapes_dtypes_and_zero_biases(scheme, dtype):
    """Every scheme gives {"W": (fan_in, fan_out), "b": (fan_out,)} per layer in the asked dtype, biases zero."""
    params = init_params(jax.random.PRNGKey(0), [784, 128, 64, 10], scheme=scheme, dtype=dtype)
    assert [p["W"].shape for p in params] == [(784, 128), (128, 64), (64, 10)]
    assert [p["b"].shape for p in params] == [(128,), (64,), (10,)]
    assert all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(params))
    assert all(float(jnp.abs(p["b"]).max()) == 0.0 for p in params)
    assert layer_sizes(params) == [784, 128, 64, 10]


def test_init_scales_match_their_definitions():
    """notebook: std 0.01; he: std sqrt(2/fan_in); glorot: uniform within sqrt(6/(fan_in+fan_out)).

    With 100k draws the sample std is within ~1% of the true one (relative s.e. ~ 1/sqrt(2n)), so 5% is safe."""
    key = jax.random.PRNGKey(1)
    W = init_params(key, [400, 250], "notebook")[0]["W"]
    assert abs(float(W.std()) - 0.01) < 0.05 * 0.01
    W = init_params(key, [400, 250], "he")[0]["W"]
    assert abs(float(W.std()) - np.sqrt(2 / 400)) < 0.05 * np.sqrt(2 / 400)
    W = init_params(key, [400, 250], "glorot")[0]["W"]
    limit = np.sqrt(6 / 650)
    assert float(jnp.abs(W).max()) <= limit and abs(float(W.std()) - limit / np.sqrt(3)) < 0.05 * limit / np.sqrt(3)


def test_init_is_a_function_of_the_key():
    """Same key, same params; different key, different params."""
    a = init_params(jax.random.PRNGKey(3), [20, 7, 3])
    b = init_params(jax.random.PRNGKey(3), [20, 7, 3])
    c = init_params(jax.random.PRNGKey(4), [20, 7, 3])
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert not np.array_equal(a[0]["W"], c[0]["W"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_is_per_layer_draws_of_split_keys(dtype):
    """init_params draws all layers in one flat program for speed; the weights must still be exactly
    the plain per-layer draws jax.random gives for keys split off the key (bit for bit), and init_layer's."""
    key = jax.random.PRNGKey(11)
    sizes = [12, 5, 3]
    keys = jax.random.split(key, 2)
    for scheme in ("notebook", "he", "glorot"):
        params = init_params(key, sizes, scheme, dtype)
        for k, (m, n), layer in zip(keys, zip(sizes[:-1], sizes[1:]), params):
            if scheme == "notebook":
                want = 0.01 * jax.random.normal(k, (m, n), dtype)
            elif scheme == "he":
                want = jnp.sqrt(2.0 / m).astype(dtype) * jax.random.normal(k, (m, n), dtype)
            else:
                limit = np.sqrt(6.0 / (m + n))
                want = jax.random.uniform(k, (m, n), dtype, -limit, limit)
            assert np.array_equal(np.asarray(layer["W"]), np.asarray(want)), (scheme, m, n)
        assert np.array_equal(np.asarray(init_layer(k, m, n, scheme, dtype)["W"]), np.asarray(want))


@pytest.mark.parametrize("sizes", [[5], [0, 3], [4, -1, 2]])
def test_init_rejects_bad_sizes(sizes):
    """Fewer than two sizes or non-positive sizes raise ValueError; an unknown scheme too."""
    with pytest.raises(ValueError):
        init_params(jax.random.PRNGKey(0), sizes)
    with pytest.raises(ValueError, match="scheme"):
        init_params(jax.random.PRNGKey(0), [3, 2], scheme="xavier-ish")


def test_init_params_numpy_is_the_notebooks_draw():
    """np.random.seed(42) then randn(784,128), randn(128,64), randn(64,10), each * 0.01, in that order."""
    params = init_params_numpy(42, [784, 128, 64, 10])
    np.random.seed(42)
    W1 = np.random.randn(784, 128) * 0.01
    W2 = np.random.randn(128, 64) * 0.01
    W3 = np.random.randn(64, 10) * 0.01
    for p, W in zip(params, (W1, W2, W3)):
        assert p["W"].dtype == jnp.float64 and np.array_equal(np.asarray(p["W"]), W)


_forward = jax.jit(forward)
_intermediates = jax.jit(forward_intermediates)


@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 3, 12]), min_size=2, max_size=5), n=st.sampled_from([1, 4, 9]),
       seed=st.integers(0, 2**16))
def test_forward_shapes_any_depth(sizes, n, seed):
    """forward maps (N, D) to (N, C) for any depth; the intermediates' last Z equals the logits and
    their last A is softmax of them."""
    params = init_params(jax.random.PRNGKey(seed), sizes, "he", jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (n, sizes[0]), jnp.float64)
    logits = _forward(params, x)
    assert logits.shape == (n, sizes[-1])
    cache = _intermediates(params, x)
    L = len(params)
    # Two programs, the same float64 math: identical on a CPU; a GPU may fuse and order the products'
    # sums differently in each, so a few ulps (XLA promises no more).
    np.testing.assert_allclose(cache[f"Z{L}"], logits, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cache[f"A{L}"], softmax(logits), rtol=1e-13, atol=0)
    for i in range(1, L):
        assert float(cache[f"A{i}"].min()) >= 0.0


def test_forward_matches_a_numpy_reference():
    """Two ReLU layers and a linear head, written out in numpy, give the same logits (float64)."""
    params = init_params(jax.random.PRNGKey(0), [6, 5, 4, 3], "he", jnp.float64)
    x = np.random.default_rng(0).normal(size=(7, 6))
    P = [{k: np.asarray(v) for k, v in p.items()} for p in params]
    h = np.maximum(0, x @ P[0]["W"] + P[0]["b"])
    h = np.maximum(0, h @ P[1]["W"] + P[1]["b"])
    np.testing.assert_allclose(forward(params, jnp.asarray(x)), h @ P[2]["W"] + P[2]["b"], rtol=1e-13)


def test_softmax_and_log_softmax_are_stable():
    """Huge logits do not overflow: rows sum to 1 and log_softmax stays finite where softmax underflows."""
    logits = jnp.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], jnp.float64)
    p = softmax(logits)
    assert bool(jnp.all(jnp.isfinite(p)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-15)
    lp = log_softmax(logits)
    assert bool(jnp.all(jnp.isfinite(lp)))
    assert float(lp[0, 2]) == pytest.approx(-2000.0)
    ref = np.log(np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum())
    np.testing.assert_allclose(lp[1], ref, rtol=1e-14)


def test_relu_derivative_at_zero_is_zero():
    """The notebook's ReLU derivative is the mask Z > 0, so 0 at exactly 0; model.relu agrees under autodiff,
    whereas jnp.maximum(0, z) would give 0.5 there."""
    g = jax.grad(lambda z: relu(z).sum())(jnp.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])
    g_max = jax.grad(lambda z: jnp.maximum(0.0, z).sum())(jnp.array([0.0]))
    assert float(g_max[0]) == 0.5  # the alternative we chose against


def test_dropout_rate_zero_is_identity_and_eval_is_deterministic():
    """rate 0 returns the input; forward without a key ignores dropout entirely."""
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(inverted_dropout(jax.random.PRNGKey(0), x, 0.0), x)
    params = init_params(jax.random.PRNGKey(0), [4, 8, 2], "he", jnp.float64)
    np.testing.assert_array_equal(forward(params, x, dropout=0.5), forward(params, x))
    np.testing.assert_array_equal(forward(params, x, key=jax.random.PRNGKey(1), dropout=0.0), forward(params, x))


def test_dropout_preserves_the_expectation():
    """Inverted dropout keeps E[output] = input: the mean over 4M Bernoulli(0.7) draws of x/0.7 is within
    4 standard errors (s.e. = sqrt(0.3/0.7)/sqrt(n) ~ 3e-4) of x; about 30% of units are zeroed."""
    x = jnp.ones((2000, 2000))
    out = inverted_dropout(jax.random.PRNGKey(7), x, 0.3)
    assert abs(float(out.mean()) - 1.0) < 4 * np.sqrt(0.3 / 0.7) / 2000
    assert abs(float((out == 0).mean()) - 0.3) < 0.002
    assert not np.array_equal(out, inverted_dropout(jax.random.PRNGKey(8), x, 0.3))


_NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "gelu": lambda z: z * 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2))),  # exact, not the tanh form
}


@pytest.mark.parametrize("activation", [*ACTIVATIONS, "callable"])
def test_each_activation_matches_a_numpy_reference(activation):
    """forward(activation=...) is act(x W1 + b1) W2 + b2 for every named activation and for a callable,
    in float64 out when float64 goes in; forward_intermediates and predict follow the same activation."""
    params = init_params(jax.random.PRNGKey(2), [6, 5, 3], "he", jnp.float64)
    x = np.random.default_rng(1).normal(size=(7, 6))
    act, ref = (jnp.sin, np.sin) if activation == "callable" else (activation, _NUMPY_ACTIVATIONS[activation])
    P = [{k: np.asarray(v) for k, v in p.items()} for p in params]
    want = ref(x @ P[0]["W"] + P[0]["b"]) @ P[1]["W"] + P[1]["b"]
    logits = forward(params, jnp.asarray(x), activation=act)
    assert logits.dtype == jnp.float64
    np.testing.assert_allclose(logits, want, rtol=1e-13, atol=1e-15)
    cache = forward_intermediates(params, jnp.asarray(x), activation=act)
    np.testing.assert_allclose(cache["Z2"], want, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(predict(params, jnp.asarray(x), activation=act), np.argmax(want, axis=1))


def test_one_init_default_everywhere():
    """One default init, He's (``model.DEFAULT_INIT``): init_layer, init_params, the MLP value, training's
    config and the sweep and gradcheck commands all draw with it unless told otherwise."""
    import inspect

    import jaxmlp
    from jaxmlp.cli import build_parser
    from jaxmlp.config import TrainConfig
    from jaxmlp.model import DEFAULT_INIT

    assert DEFAULT_INIT == "he"
    assert inspect.signature(init_layer).parameters["scheme"].default == DEFAULT_INIT
    assert inspect.signature(init_params).parameters["scheme"].default == DEFAULT_INIT
    assert inspect.signature(jaxmlp.MLP.init).parameters["scheme"].default == DEFAULT_INIT
    assert TrainConfig().init == DEFAULT_INIT
    parser = build_parser()
    assert parser.parse_args(["sweep"]).init == [DEFAULT_INIT]
    assert parser.parse_args(["gradcheck"]).init == DEFAULT_INIT
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(init_layer(key, 4, 3)["W"], init_layer(key, 4, 3, "he")["W"])


@pytest.mark.parametrize("how, message", [
    ("wide x", r"x: expected shape \(N, 4\) to match the first layer's fan_in 4, got \(2, 5\)"),
    ("one layer", "params: .*single layer dict; wrap it in a list"),
    ("no chain", "params: layer 1's W takes 2 inputs but layer 0 gives 3 outputs"),
    ("bad bias", r"params: layer 0 has W \(4, 3\) and b \(1, 3\)"),
    ("empty", "params: expected a non-empty list"),
    ("unknown activation", "activation: unknown 'swish'"),
])
def test_shape_errors_name_the_argument(how, message):
    """forward, forward_intermediates and predict raise one ValueError naming the argument, at trace time."""
    params = init_params(jax.random.PRNGKey(0), [4, 3, 2])
    x, activation = jnp.ones((2, 4)), "relu"
    if how == "wide x":
        x = jnp.ones((2, 5))
    elif how == "one layer":
        params = params[0]
    elif how == "no chain":
        params[1] = {"W": jnp.ones((2, 2)), "b": jnp.ones(2)}
    elif how == "bad bias":
        params[0] = {"W": params[0]["W"], "b": params[0]["b"][None]}
    elif how == "empty":
        params = []
    else:
        activation = "swish"
    for fn in (forward, jax.jit(forward, static_argnames="activation"), forward_intermediates, predict):
        with pytest.raises(ValueError, match=message):
            fn(params, x, activation=activation)


# ---------------------------------------------------------------- what mutation testing found unpinned
# (docs/mutation.md): biases that are zero at init hid their sign, defaults went unused, messages unread.


def _biased(sizes=(4, 3, 2)):
    params = init_params(jax.random.PRNGKey(0), list(sizes), "he", jnp.float64)
    return [{"W": p["W"], "b": p["b"] + 0.25 * (i + 1)} for i, p in enumerate(params)]


def test_forward_adds_the_biases():
    """With non-zero biases, forward and forward_intermediates give the NumPy reference."""
    params, x = _biased(), np.linspace(-1, 1, 8).reshape(2, 4)
    h = np.maximum(x @ np.asarray(params[0]["W"]) + np.asarray(params[0]["b"]), 0)
    want = h @ np.asarray(params[1]["W"]) + np.asarray(params[1]["b"])
    np.testing.assert_allclose(forward(params, jnp.asarray(x)), want, rtol=1e-13)
    cache = forward_intermediates(params, jnp.asarray(x))  # the default activation is relu
    assert cache["A0"] is not None and np.array_equal(cache["A0"], x)
    np.testing.assert_allclose(cache["Z2"], want, rtol=1e-13)
    np.testing.assert_allclose(cache["A2"], np.exp(want) / np.exp(want).sum(axis=1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(cache["A1"], h, rtol=1e-13)


def test_defaults_and_a_single_example():
    """predict's and forward's defaults (relu, no dropout even with a key); one example (D,) is accepted."""
    params, x = _biased(), jnp.linspace(-1, 1, 8).reshape(2, 4)
    assert np.array_equal(predict(params, x), np.argmax(forward(params, x), axis=-1))
    assert np.array_equal(forward(params, x, key=jax.random.PRNGKey(1)), forward(params, x))
    assert forward(params, x[0]).shape == (2,) and int(predict(params, x[0])) == int(predict(params, x)[0])
    dropped = forward(params, x, key=jax.random.PRNGKey(1), dropout=0.5)
    assert not np.array_equal(dropped, forward(params, x))


def test_param_errors_say_what_they_got():
    params, x = _biased(), jnp.ones((2, 4))
    cases = [(params[0], r"^params: expected a list of layers \[\{'W': \.\.\., 'b'"),
             (7, r"^params: expected a non-empty list .* got int"),
             ([None], r"^params: layer 0 must be a dict with 'W' and 'b', got NoneType"),
             ([{"W": params[0]["W"]}], r"^params: layer 0 must be a dict with 'W' and 'b', got dict"),
             ([params[0], {"W": jnp.ones((5, 2)), "b": jnp.ones(2)}], r"^params: layer 1's W takes 5 inputs")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            forward(bad, x)
    with pytest.raises(ValueError, match="^activation: unknown 'swish'; choose one of relu, tanh, sigmoid, gelu"):
        forward(params, x, activation="swish")


def test_init_functions_edges_and_dtypes(x64):
    """init_layer gives {"W", "b"} in the dtype asked for; width-1 layers are allowed and a size of 0 is
    refused with the sizes in the message; init_params_numpy takes a seed or a RandomState (continuing
    its stream) and honours its dtype."""
    layer = init_layer(jax.random.PRNGKey(0), 3, 2, "glorot", jnp.float16)
    assert set(layer) == {"W", "b"} and layer["W"].dtype == layer["b"].dtype == jnp.float16
    assert layer["W"].shape == (3, 2) and not np.any(np.asarray(layer["b"]))
    assert [p["W"].shape for p in init_params(jax.random.PRNGKey(0), [3, 1, 1])] == [(3, 1), (1, 1)]
    with pytest.raises(ValueError) as err:
        init_params(jax.random.PRNGKey(0), [3, 0, 2])
    assert str(err.value) == "layer_sizes must hold >= 2 positive sizes, got [3, 0, 2]"
    rng = np.random.RandomState(5)
    rng.randn(1)  # a used stream: a copy of the seed would not continue it
    from_rng = init_params_numpy(rng, [4, 3])
    expect = np.random.RandomState(5)
    expect.randn(1)
    np.testing.assert_array_equal(np.asarray(from_rng[0]["W"]), expect.randn(4, 3) * 0.01)
    p32 = init_params_numpy(0, [4, 3], dtype=np.float32)
    assert p32[0]["W"].dtype == p32[0]["b"].dtype == jnp.float32
    p64 = init_params_numpy(0, [4, 3])
    assert p64[0]["W"].dtype == p64[0]["b"].dtype == jnp.float64
