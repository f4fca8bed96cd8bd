"""Losses: cross-entropy from logits, both label forms, and the notebook's epsilon form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxmlp.losses import accuracy, cross_entropy, l2_penalty, loss, notebook_cross_entropy, notebook_loss
from jaxmlp.model import forward, init_params, softmax

# float64 references throughout (see conftest's x64 fixture).
pytestmark = pytest.mark.usefixtures("x64")


_cross_entropy = jax.jit(cross_entropy)


@settings(max_examples=10, deadline=None)
@given(n=st.sampled_from([1, 2, 7, 20]), c=st.sampled_from([2, 3, 10]), seed=st.integers(0, 2**16))
def test_cross_entropy_matches_numpy_for_both_label_forms(n, c, seed):
    """Mean -log softmax(logits)[label] equals a numpy reference for int labels and for one-hot rows (float64)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    labels = rng.integers(0, c, size=n)
    z = logits - logits.max(axis=1, keepdims=True)
    ref = -np.mean(z[np.arange(n), labels] - np.log(np.exp(z).sum(axis=1)))
    got_int = _cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    got_hot = _cross_entropy(jnp.asarray(logits), jnp.asarray(np.eye(c)[labels]))
    np.testing.assert_allclose(got_int, ref, rtol=1e-13)
    np.testing.assert_allclose(got_hot, ref, rtol=1e-13)


def test_cross_entropy_is_finite_for_confident_wrong_predictions():
    """From logits the loss stays finite (1000 here) where log(softmax) would be log(0) = -inf."""
    logits = jnp.array([[1000.0, -1000.0]], jnp.float64)
    assert float(cross_entropy(logits, jnp.array([1]))) == pytest.approx(2000.0)
    assert bool(jnp.isinf(jnp.log(softmax(logits))[0, 1]))


def test_notebook_epsilon_form():
    """notebook_cross_entropy is the seed's -sum(Y log(p + 1e-8)) / m; it caps a zero probability at -log(1e-8)."""
    probs = jnp.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], jnp.float64)
    Y = np.eye(3)[[0, 0]]
    ref = -np.sum(Y * np.log(np.asarray(probs) + 1e-8)) / 2
    np.testing.assert_allclose(notebook_cross_entropy(probs, jnp.array([0, 0])), ref, rtol=1e-15)
    np.testing.assert_allclose(notebook_cross_entropy(probs, jnp.asarray(Y)), ref, rtol=1e-15)
    assert ref == pytest.approx((-np.log(0.7 + 1e-8) - np.log(1e-8)) / 2)


def test_loss_and_notebook_loss_agree_when_probabilities_are_moderate():
    """On a fresh network (probabilities ~0.1) the epsilon changes the loss by ~1e-7 relative at most."""
    params = init_params(jax.random.PRNGKey(0), [8, 6, 4], "he", jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8), jnp.float64)
    y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 4)
    np.testing.assert_allclose(loss(params, x, y), notebook_loss(params, x, y), rtol=1e-6)


def test_bad_label_shape_is_rejected():
    """Labels that are neither (N,) nor (N, C) raise ValueError naming the shape."""
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_accuracy_counts_argmax_matches():
    """Accuracy is the fraction of rows whose argmax equals the label, for int and one-hot labels."""
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert float(accuracy(logits, jnp.array([1, 0, 0, 1]))) == 0.5
    assert float(accuracy(logits, jnp.eye(2)[jnp.array([1, 0, 1, 0])])) == 1.0


def test_l2_penalty_counts_weights_only():
    """l2_penalty = 0.5 * sum of squared W over layers, biases left out; its gradient is W (0 for b)."""
    params = init_params(jax.random.PRNGKey(0), [4, 3, 2], "he", jnp.float64)
    params = jax.tree_util.tree_map(lambda a: a + 0.5, params)  # non-zero biases, which must not count
    want = 0.5 * sum(float(np.sum(np.asarray(p["W"]) ** 2)) for p in params)
    np.testing.assert_allclose(float(l2_penalty(params)), want, rtol=1e-14)
    g = jax.grad(l2_penalty)(params)
    for gl, pl in zip(g, params):
        np.testing.assert_allclose(gl["W"], pl["W"], rtol=1e-15)
        assert float(jnp.abs(gl["b"]).max()) == 0.0
    with pytest.raises(ValueError, match="params"):
        l2_penalty([])


def test_loss_options():
    """loss with l2 adds l2 * l2_penalty; a Python 0 leaves the arithmetic exactly cross_entropy(forward);
    activation, dropout and key reach forward."""
    params = init_params(jax.random.PRNGKey(0), [8, 6, 4], "he", jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8), jnp.float64)
    y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 4)
    base = cross_entropy(forward(params, x), y)
    assert float(loss(params, x, y)) == float(base)
    np.testing.assert_allclose(loss(params, x, y, l2=0.1), base + 0.1 * l2_penalty(params), rtol=1e-15)
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(loss(params, x, y, activation="tanh", dropout=0.5, key=key),
                               cross_entropy(forward(params, x, activation="tanh", dropout=0.5, key=key), y))


def test_label_count_must_match_the_rows():
    """Labels whose count differs from the rows they label are one ValueError naming labels and both counts."""
    params = init_params(jax.random.PRNGKey(0), [8, 6, 4], "he", jnp.float64)
    x = jnp.ones((5, 8), jnp.float64)
    with pytest.raises(ValueError, match="labels: 4 labels for 5 rows of logits"):
        cross_entropy(jnp.zeros((5, 3)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="labels: 6 labels for 5 rows of x"):
        loss(params, x, jnp.zeros(6, jnp.int32))
    with pytest.raises(ValueError, match="labels: 4 labels for 5 rows of x"):
        notebook_loss(params, x, jnp.zeros((4, 4)))


# ---------------------------------------------------------------- what mutation testing found unpinned
# (docs/contributing.md, "Mutation testing")


def test_both_label_forms_on_a_non_square_batch():
    """A quick fixed case of the property test above, with N != C so that an axis or a divisor mixed up
    between rows and classes shows: int labels and one-hot targets give the NumPy reference."""
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
    y = jnp.array([2, 0, 1, 2, 1])
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    want = -np.mean(np.asarray(logp)[np.arange(5), np.asarray(y)])
    np.testing.assert_allclose(cross_entropy(logits, y), want, rtol=1e-13)
    np.testing.assert_allclose(cross_entropy(logits, jnp.eye(3)[y]), want, rtol=1e-13)
    soft = jnp.full((5, 3), 1 / 3)  # soft targets: the one-hot branch's arithmetic, not a gather
    np.testing.assert_allclose(cross_entropy(logits, soft), -np.mean(np.asarray(logp)), rtol=1e-13)
    with pytest.raises(ValueError, match=r"one-hot \(N, 3\)"):
        cross_entropy(logits, jnp.zeros((5, 5)))


def test_losses_keep_a_low_precision_dtype():
    """float16 logits or probabilities give a float16 loss for int and one-hot labels alike (the targets
    are built in the inputs' dtype, so nothing is promoted behind the caller's back)."""
    logits = jnp.asarray([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]], jnp.float16)
    for labels in (jnp.array([1, 2]), jnp.eye(3, dtype=jnp.float32)[jnp.array([1, 2])]):
        assert cross_entropy(logits, labels).dtype == jnp.float16
        assert notebook_cross_entropy(softmax(logits), labels).dtype == jnp.float16


def test_a_python_zero_l2_leaves_the_term_out_of_the_program():
    """l2=0 (a Python 0) traces exactly the program without L2; l2=1 keeps the term."""
    params = init_params(jax.random.PRNGKey(0), [4, 3, 2], "he", jnp.float64)
    x, y = jnp.ones((2, 4), jnp.float64), jnp.array([0, 1])
    bare = str(jax.make_jaxpr(lambda p: cross_entropy(forward(p, x), y))(params))
    assert str(jax.make_jaxpr(lambda p: loss(p, x, y, l2=0))(params)) == bare
    assert str(jax.make_jaxpr(lambda p: loss(p, x, y))(params)) == bare
    want = cross_entropy(forward(params, x), y) + l2_penalty(params)
    np.testing.assert_allclose(loss(params, x, y, l2=1), want, rtol=1e-15)


def test_a_key_alone_drops_nothing():
    """loss with a key but no dropout rate equals loss without a key (dropout defaults to 0)."""
    params = init_params(jax.random.PRNGKey(0), [4, 3, 2], "he", jnp.float64)
    x, y = jnp.ones((2, 4), jnp.float64), jnp.array([0, 1])
    assert float(loss(params, x, y, key=jax.random.PRNGKey(1))) == float(loss(params, x, y))


def test_loss_errors_name_their_argument():
    with pytest.raises(ValueError, match=r"^labels: expected int \(N,\) or one-hot \(N, C\)"):
        cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="^params: l2_penalty needs at least one layer"):
        l2_penalty([])
