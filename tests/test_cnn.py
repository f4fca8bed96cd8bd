"""Tests for jaxmlp.cnn: shapes, input layouts, dropout determinism, and gradients vs
central finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import cnn
from jaxmlp._compat import enable_x64

# float64 references throughout (see conftest's x64 fixture).
pytestmark = pytest.mark.usefixtures("x64")


# Tests share one tiny float64 CNN and jit what they call: on a busy 2-core CPU each eager op
# of a new shape costs a compile, which otherwise dominates the runtime.
@pytest.fixture(scope="module")
def small_f64():
    """Tiny float64 CNN on 7x7 inputs: blocks 7->3->1 exercise odd-size (VALID) pooling."""
    with enable_x64(True):  # module-scoped: built before the tests' own x64 fixture opens
        return cnn.init_cnn_params(jax.random.PRNGKey(3), in_shape=(7, 7, 1), channels=(3, 4), hidden=16,
                                   num_classes=3, dtype=jnp.float64)


def test_default_param_shapes_and_logits():
    """Default init: HWIO kernels 3x3x1x32, 3x3x32x64, dense 3136->128->10; logits (N, 10) float32."""
    params = jax.eval_shape(cnn.init_cnn_params, jax.random.PRNGKey(0))
    shapes = [(p["W"].shape, p["b"].shape) for p in params]
    assert shapes == [((3, 3, 1, 32), (32,)), ((3, 3, 32, 64), (64,)),
                      ((7 * 7 * 64, 128), (128,)), ((128, 10), (10,))]
    assert all(p["W"].dtype == jnp.float32 for p in params)
    logits = jax.eval_shape(cnn.cnn_forward, params, jax.ShapeDtypeStruct((3, 784), jnp.float32))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_init_statistics():
    """He init: conv/dense weights have std ~ sqrt(2/fan_in); biases are zero."""
    params = cnn.init_cnn_params(jax.random.PRNGKey(0), in_shape=(8, 8, 1), channels=(16, 32), hidden=64)
    for p, fan_in in zip(params, [9 * 1, 9 * 16, 2 * 2 * 32, 64]):
        assert np.std(np.asarray(p["W"])) == pytest.approx(np.sqrt(2 / fan_in), rel=0.25)
        assert not np.any(np.asarray(p["b"]))


def test_three_input_layouts_agree(small_f64):
    """(N, H*W), (N, H, W) and (N, H, W, 1) give identical finite logits (7x7 here; 784 is
    the same code path with side 28)."""
    params = small_f64
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 7, 7)))
    fwd = cnn.cnn_forward  # eager: shares per-op compiles with the other tests
    a = fwd(params, x.reshape(2, 49))
    b = fwd(params, x)
    c = fwd(params, x[..., None])
    assert a.shape == (2, 3) and np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_dropout_only_with_key(small_f64):
    """key=None is deterministic (and ignores dropout); a key with dropout>0 changes logits,
    differently per key; dropout=0 with a key equals eval."""
    params = small_f64
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 49)))
    fwd = cnn.cnn_forward  # eager: the four variants share per-op compiles, jit would compile 4x
    eval1 = fwd(params, x, dropout=0.5)
    eval2 = fwd(params, x)
    np.testing.assert_array_equal(np.asarray(eval1), np.asarray(eval2))
    k1, k2 = jax.random.PRNGKey(10), jax.random.PRNGKey(11)
    d1 = fwd(params, x, key=k1, dropout=0.5)
    d2 = fwd(params, x, key=k2, dropout=0.5)
    assert not np.allclose(np.asarray(d1), np.asarray(eval1))
    assert not np.allclose(np.asarray(d1), np.asarray(d2))
    np.testing.assert_array_equal(np.asarray(fwd(params, x, key=k1, dropout=0.0)), np.asarray(eval1))


def test_inverted_dropout_preserves_mean(small_f64):
    """Averaged over many dropout masks, logits approach eval logits (inverted scaling; the
    logits are linear in the mask, so the expectation is exact)."""
    params = small_f64
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 49)))
    # One call on 4000 copies of each image: every row draws its own mask.
    copies = jnp.repeat(x, 4000, axis=0)
    mean = cnn.cnn_forward(params, copies, key=jax.random.PRNGKey(4), dropout=0.3).reshape(2, 4000, -1).mean(1)
    eval_ = cnn.cnn_forward(params, x)
    scale = float(jnp.abs(eval_).max())
    # Monte Carlo error ~ std/sqrt(4000) ~ 2% of the logit scale; non-inverted dropout would
    # be off by the full 30%.
    np.testing.assert_allclose(np.asarray(mean), np.asarray(eval_), atol=0.08 * scale)


@pytest.mark.parametrize("conv_impl", ["xla", "im2col"])
def test_grad_matches_central_differences(small_f64, conv_impl):
    """jax.grad of a scalar loss matches central differences (float64) at random coordinates
    of every layer, including through maxpool and odd-size pooling."""
    params = small_f64
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.uniform(size=(3, 7, 7, 1)))
    labels = jnp.asarray([0, 2, 1])

    @jax.jit
    def loss(params):
        logits = cnn.cnn_forward(params, x, conv_impl=conv_impl)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

    grads = jax.jit(jax.grad(loss))(params)
    def bumped_loss(i, name, idx, delta):
        """The loss with one coordinate, params[i][name].ravel()[idx], moved by delta."""
        flat = np.asarray(params[i][name]).ravel().copy()
        flat[idx] += delta
        new = [dict(layer) for layer in params]
        new[i][name] = jnp.asarray(flat.reshape(params[i][name].shape))
        return float(loss(new))

    eps = 1e-6
    for i, layer in enumerate(params):
        for name in ("W", "b"):
            size = layer[name].size
            for idx in rng.choice(size, size=min(3, size), replace=False):
                fd = (bumped_loss(i, name, idx, eps) - bumped_loss(i, name, idx, -eps)) / (2 * eps)
                got = float(np.asarray(grads[i][name]).ravel()[idx])
                # Central differences: O(eps^2) truncation + ~1e-16/eps rounding ~ 1e-10.
                assert got == pytest.approx(fd, rel=1e-6, abs=1e-8), (i, name, idx)


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_im2col_matches_xla_conv(small_f64, kernel_size):
    """The im2col path equals lax.conv_general_dilated (float64, multi-channel, odd sizes,
    odd and even kernels), and so do the logits."""
    rng = np.random.default_rng(7)
    h = jnp.asarray(rng.standard_normal((2, 7, 6, 3)))
    W = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 3, 5)))
    a = cnn._conv_same(h, W, "xla")
    b = cnn._conv_same(h, W, "im2col")
    # Same 27/48-term dot products, different summation order: a few ulps of values ~10.
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)
    x = jnp.asarray(rng.uniform(size=(2, 49)))
    np.testing.assert_allclose(np.asarray(cnn.cnn_forward(small_f64, x, conv_impl="im2col")),
                               np.asarray(cnn.cnn_forward(small_f64, x, conv_impl="xla")), rtol=1e-12, atol=1e-12)


def test_bad_inputs_raise(small_f64):
    """Non-square flattened input, bad dropout/conv_impl, misordered layers raise ValueError."""
    params = small_f64
    with pytest.raises(ValueError):
        cnn.cnn_forward(params, jnp.zeros((1, 50)))
    with pytest.raises(ValueError):
        cnn.cnn_forward(params, jnp.zeros((1, 49)), key=jax.random.PRNGKey(0), dropout=1.0)
    with pytest.raises(ValueError, match="conv_impl"):
        cnn.cnn_forward(params, jnp.zeros((1, 49)), conv_impl="fft")
    with pytest.raises(ValueError, match="conv"):
        cnn.cnn_forward(params[::-1], jnp.zeros((1, 49)))
