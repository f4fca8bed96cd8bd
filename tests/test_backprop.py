"""The notebook's manual backprop against jax.grad and central finite differences, in float64.

Tolerances: manual and autodiff compute the same expression in a different order, so they agree to
round-off: <= 1e-10 relative (the issue's bound; observed ~1e-14). Central differences with eps = 1e-4
err by O(eps^2 * f''') truncation (~1e-8 relative here) plus O(ulp(f)/eps) round-off (~1e-11 absolute),
so 1e-5 relative (with an absolute floor of 1e-8 for near-zero entries) cannot be hit by chance yet
catches any real mistake (a wrong sign, a missing 1/m or a transposed product is off by O(1)).
Every named activation, the L2 term and dropout are covered; a step across a ReLU kink is re-stepped or
skipped, never reported as a failure.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxmlp.backprop import (
    AGREE_RTOL,
    autodiff_grad,
    finite_difference_grad,
    gradcheck,
    gradcheck_mlp,
    manual_grad,
    max_relative_error,
)
from jaxmlp.losses import loss
from jaxmlp.model import ACTIVATIONS, init_params

# float64 references throughout (see conftest's x64 fixture).
pytestmark = pytest.mark.usefixtures("x64")


def _rel(a, b) -> float:
    """max |a - b| over the parameter, relative to its largest gradient entry."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(a).max(), np.abs(b).max())
    return float(np.abs(a - b).max() / scale) if scale > 0 else 0.0


def _problem(seed, sizes, n, one_hot):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_params(k1, sizes, "he", jnp.float64)
    x = jax.random.uniform(k2, (n, sizes[0]), jnp.float64)
    y = jax.random.randint(k3, (n,), 0, sizes[-1])
    if one_hot:
        y = jax.nn.one_hot(y, sizes[-1], dtype=jnp.float64)
    return params, x, y


# Jitted, so each drawn shape costs one compilation instead of one per primitive (eager dispatch); l2 and
# the key are traced, as the engine passes them.
_STATIC = ("activation", "dropout")
_manual_jit = jax.jit(manual_grad, static_argnames=_STATIC)
_auto_jit = jax.jit(autodiff_grad, static_argnames=_STATIC)


# Widths and batch sizes come from small sets (edge cases 1 and 2 included) so drawn shapes repeat and
# hit the jit cache: each new shape costs a compilation, and the suite must stay fast on 2 cores.
_WIDTHS = st.sampled_from([1, 2, 5, 16])


@settings(max_examples=8, deadline=None)
@given(depth=st.integers(1, 4), width=st.lists(_WIDTHS, min_size=5, max_size=5),
       n=st.sampled_from([1, 3, 8]), seed=st.integers(0, 2**16), one_hot=st.booleans(),
       activation=st.sampled_from(ACTIVATIONS), l2=st.sampled_from([0.0, 0.01]), dropout=st.sampled_from([0.0, 0.3]))
def test_manual_equals_autodiff_any_depth(depth, width, n, seed, one_hot, activation, l2, dropout):
    """manual_grad == jax.grad(loss) to 1e-10 relative, per parameter, depths 1-4, random shapes, both label
    forms, any activation, L2 and dropout (traced l2 and key)."""
    sizes = [width[0] + 1, *width[1:depth], max(width[-1], 2)]
    params, x, y = _problem(seed, sizes, n, one_hot)
    kwargs = {"activation": activation, "l2": jnp.asarray(l2), "dropout": dropout, "key": jax.random.PRNGKey(seed)}
    manual, auto = _manual_jit(params, x, y, **kwargs), _auto_jit(params, x, y, **kwargs)
    assert jax.tree_util.tree_structure(manual) == jax.tree_util.tree_structure(params)
    for m, a, p in zip(jax.tree_util.tree_leaves(manual), jax.tree_util.tree_leaves(auto),
                       jax.tree_util.tree_leaves(params)):
        assert m.shape == p.shape and m.dtype == jnp.float64
        assert _rel(m, a) <= 1e-10


_RULES = [(0.0, 0.0), (0.01, 0.0), (0.0, 0.3), (0.01, 0.3)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("l2, dropout", _RULES)
def test_every_hand_derived_rule_equals_autodiff(activation, l2, dropout):
    """manual_grad == jax.grad(loss) to 1e-10 for each activation, depths 1-3, with and without the L2 term
    and dropout (the same key, so the same masks); dropout and L2 do change the gradient."""
    kwargs = {"activation": activation, "l2": l2, "dropout": dropout, "key": jax.random.PRNGKey(5)}
    for depth in (1, 2, 3):
        params, x, y = _problem(depth, [6, 5, 4, 3][:depth] + [3], 7, one_hot=depth == 2)
        manual, auto = manual_grad(params, x, y, **kwargs), autodiff_grad(params, x, y, **kwargs)
        for m, a in zip(jax.tree_util.tree_leaves(manual), jax.tree_util.tree_leaves(auto)):
            assert m.dtype == jnp.float64 and _rel(m, a) <= 1e-10, depth
        plain = manual_grad(params, x, y, activation=activation)
        changed = max_relative_error(manual, plain) > 1e-6
        assert changed == (l2 > 0 or (dropout > 0 and depth > 1)), depth


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_finite_differences_witness_every_rule(activation):
    """The third witness: gradcheck_mlp (manual vs autodiff vs central differences on every coordinate)
    passes for each activation with L2 and dropout on."""
    params, x, y = _problem(7, [4, 3, 3, 3], 6, one_hot=False)
    result = gradcheck_mlp(params, x, y, activation=activation, l2=0.01, dropout=0.3, key=jax.random.PRNGKey(1),
                           max_coords=None)
    assert result.passed, result.rows
    assert result.checked + result.skipped == sum(p.size for p in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_finite_differences_agree_with_both(depth):
    """Central differences on every coordinate of a small network agree with manual and autodiff grads."""
    sizes = [6, 5, 4, 7, 3][: depth] + [3]
    params, x, y = _problem(depth, sizes, 9, one_hot=False)
    fd, mask = finite_difference_grad(lambda p: loss(p, x, y), params, eps=1e-4)
    manual, auto = manual_grad(params, x, y), autodiff_grad(params, x, y)
    for d, k, m, a in zip(*(jax.tree_util.tree_leaves(t) for t in (fd, mask, manual, auto))):
        assert bool(np.all(k))
        assert max_relative_error(m, d, floor=1e-8) <= 1e-5
        assert max_relative_error(a, d, floor=1e-8) <= 1e-5


def test_a_wrong_gradient_is_caught():
    """The check can fail: a manual gradient missing the 1/m factor is flagged by finite differences."""
    params, x, y = _problem(0, [5, 4, 3], 8, one_hot=False)
    fd, _ = finite_difference_grad(lambda p: loss(p, x, y), params, eps=1e-4)
    wrong = jax.tree_util.tree_map(lambda g: g * x.shape[0], manual_grad(params, x, y))
    assert max_relative_error(wrong[0]["W"], fd[0]["W"], floor=1e-8) > 0.5


def test_relu_kink_exact_zeros():
    """With zero first-layer weights and biases every Z1 is exactly 0: the notebook's mask (Z > 0) makes the
    first layer's gradient 0, and jax.grad through model.relu agrees (jnp.maximum would give 0.5 * ...)."""
    params, x, y = _problem(1, [5, 4, 3], 6, one_hot=True)
    params[0] = {"W": jnp.zeros_like(params[0]["W"]), "b": jnp.zeros_like(params[0]["b"])}
    manual, auto = manual_grad(params, x, y), autodiff_grad(params, x, y)
    assert float(jnp.abs(manual[0]["W"]).max()) == 0.0
    for m, a in zip(jax.tree_util.tree_leaves(manual), jax.tree_util.tree_leaves(auto)):
        np.testing.assert_allclose(m, a, rtol=1e-12, atol=1e-15)


def test_gradcheck_reports_each_parameter(mnist):
    """gradcheck_mlp on real images of the notebook's network: one row per W/b, all errors within bounds."""
    from jaxmlp.runs import prepare

    x = prepare(mnist.x_train[:16], jnp.float64)
    y = jnp.asarray(mnist.y_train[:16])
    params = init_params(jax.random.PRNGKey(0), [784, 128, 64, 10], "he", jnp.float64)
    result = gradcheck_mlp(params, x, y, max_coords=8)
    rows = result.rows
    assert [r.name for r in rows] == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert all(r.manual_vs_autodiff <= 1e-10 for r in rows)
    assert all(max(r.manual_vs_fd, r.autodiff_vs_fd) <= 1e-5 for r in rows)
    assert result.passed and result.checked + result.skipped == 6 * 8


def test_a_traced_l2_keeps_the_arithmetic():
    """The engine passes l2 as a traced scalar: 0.0 gives the Python-0 result exactly, 0.01 the Python 0.01's."""
    params, x, y = _problem(3, [5, 4, 3], 8, one_hot=False)
    traced = jax.jit(lambda p, l2: manual_grad(p, x, y, l2=l2))
    for l2 in (0.0, 0.01):
        got = traced(params, jnp.asarray(l2))
        want = jax.jit(lambda p, l2=l2: manual_grad(p, x, y, l2=l2))(params)  # both compiled, as in training
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            if l2 == 0.0:
                np.testing.assert_array_equal(g, w)
            else:
                np.testing.assert_allclose(g, w, rtol=1e-14)


def test_a_callable_activation_is_refused_by_manual_grad():
    """manual_grad has rules for the named activations only: a callable is a ValueError pointing at jax.grad
    (forward takes it: see test_model), an unknown name a ValueError naming the argument."""
    params, x, y = _problem(0, [4, 3, 2], 5, one_hot=False)
    with pytest.raises(ValueError, match="activation: manual_grad has no hand-derived rule.*jax.grad"):
        manual_grad(params, x, y, activation=jnp.sin)
    with pytest.raises(ValueError, match="activation: unknown 'swish'"):
        manual_grad(params, x, y, activation="swish")


@pytest.mark.parametrize("how, message", [
    ("wide x", r"x: .*\(N, 4\).*fan_in 4.*\(5, 5\)"),
    ("one layer", "params: .*single layer dict"),
    ("no chain", "params: layer 1's W takes 2 inputs but layer 0 gives 3 outputs"),
    ("few labels", "labels: 4 labels for 5 rows of x"),
])
def test_shape_errors_name_the_argument(how, message):
    """Mismatched shapes are one ValueError naming the argument (and both numbers), before any arithmetic."""
    params, x, y = _problem(0, [4, 3, 2], 5, one_hot=False)
    if how == "wide x":
        x = jnp.ones((5, 5))
    elif how == "one layer":
        params = params[0]
    elif how == "no chain":
        params[1] = {"W": jnp.ones((2, 2)), "b": jnp.ones(2)}
    else:
        y = y[:4]
    with pytest.raises(ValueError, match=message):
        manual_grad(params, x, y)
    with pytest.raises(ValueError, match=message):
        loss(params, x, y)


def _kink_problem():
    """Hidden unit 0 of example 0 sits 3e-7 above its ReLU kink (closer than the smallest step, 1e-6) and
    unit 1 of example 1 3e-5 above it (inside the first step, 1e-4, outside the second)."""
    params, x, y = _problem(4, [3, 2, 3], 4, one_hot=False)
    W, b = params[0]["W"], params[0]["b"]
    b = b.at[0].set(3e-7 - x[0] @ W[:, 0]).at[1].set(3e-5 - x[1] @ W[:, 1])
    params[0] = {"W": W, "b": b}
    return params, x, y


def test_a_step_across_a_relu_kink_is_skipped_not_failed():
    """Plain central differences on b1 are off by far more than 1e-5 there (the step crosses the kink);
    gradcheck re-steps unit 1's coordinate, skips unit 0's, says so, and passes."""
    params, x, y = _kink_problem()
    f = jax.jit(lambda p: loss(p, x, y))
    auto = autodiff_grad(params, x, y)[0]["b"]
    for unit in (0, 1):
        def bumped(d, unit=unit):
            return [{"W": params[0]["W"], "b": params[0]["b"].at[unit].add(d)}, params[1]]
        naive = (float(f(bumped(1e-4))) - float(f(bumped(-1e-4)))) / 2e-4
        assert abs(naive - float(auto[unit])) > 1e-3 * abs(float(auto[unit]))
    result = gradcheck_mlp(params, x, y, max_coords=None)
    b1 = next(r for r in result.rows if r.name == "b1")
    assert (b1.checked, b1.restepped, b1.skipped) == (1, 1, 1)
    assert result.passed and result.skipped >= 1 and result.restepped >= 1


def test_a_wrong_gradient_still_fails_near_kinks():
    """Kink handling hides nothing: a hand gradient missing the 1/m factor fails gradcheck on the kink problem."""
    params, x, y = _kink_problem()

    def wrong(p, x, y):
        return jax.tree_util.tree_map(lambda g: g * x.shape[0], manual_grad(p, x, y))

    result = gradcheck(loss, params, x, y, grad_fn=wrong, max_coords=None)
    assert not result.passed
    assert max(r.manual_vs_fd for r in result.rows) > 0.5 and max(r.autodiff_vs_fd for r in result.rows) <= 1e-5
    assert max(r.manual_vs_autodiff for r in result.rows) > AGREE_RTOL


def test_gradcheck_takes_any_pytree_and_loss():
    """gradcheck on a dict-of-dicts PyTree and a loss that is no MLP: rows named by key path, all checked;
    float32 params are refused (their differences are round-off)."""
    key = jax.random.PRNGKey(0)
    params = {"scale": jnp.array(1.5, jnp.float64),
              "net": {"A": jax.random.normal(key, (3, 2), jnp.float64), "v": jnp.arange(2.0, dtype=jnp.float64)}}
    data = jax.random.normal(jax.random.PRNGKey(1), (5, 3), jnp.float64)

    def loss_fn(p, data):
        return jnp.mean(jnp.tanh(data @ p["net"]["A"] + p["net"]["v"]) ** 2) * p["scale"] ** 2

    result = gradcheck(loss_fn, params, data, max_coords=None)
    assert result.passed and result.skipped == 0 and result.checked == 1 + 6 + 2
    assert sorted(r.name for r in result.rows) == ["['net']['A']", "['net']['v']", "['scale']"]
    assert all(r.manual_vs_fd is None for r in result.rows)
    with pytest.raises(ValueError, match="params: .*float64"):
        gradcheck(loss_fn, jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params), data)


def test_max_relative_error_on_pytrees():
    """Two gradient PyTrees: the max over leaves; a mask PyTree selects entries; other structures are refused."""
    a = [{"W": jnp.array([[1.0, 2.0]]), "b": jnp.array([4.0])}]
    b = [{"W": jnp.array([[1.0, 2.2]]), "b": jnp.array([2.0])}]
    assert max_relative_error(a, b) == pytest.approx(0.5)
    mask = [{"W": np.array([[True, True]]), "b": np.array([False])}]
    assert max_relative_error(a, b, mask) == pytest.approx(0.2 / 2.2)
    assert max_relative_error(a[0]["W"], b[0]["W"]) == pytest.approx(0.2 / 2.2)
    with pytest.raises(ValueError, match="b: "):
        max_relative_error(a, b[0])
    with pytest.raises(ValueError, match="mask: "):
        max_relative_error(a, b, mask[0])
    with pytest.raises(ValueError, match="b: shape"):
        max_relative_error(jnp.ones(3), jnp.ones(2))
