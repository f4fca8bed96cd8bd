"""Losses: cross-entropy from logits, both label forms, and the notebook's epsilon form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxmlp.losses import accuracy, cross_entropy, loss, notebook_cross_entropy, notebook_loss
from jaxmlp.model import init_params, softmax

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
