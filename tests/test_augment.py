"""Tests for jaxmlp.augment: identity at zero strength, known shifts, randomness per key,
jit, shapes/dtypes, and value range."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import augment


def images(n=6, side=28, seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1.0, (n, side, side)).astype(dtype))


def test_zero_strength_is_identity():
    """max_shift=0 / zero rotation, scale and shift return the input exactly."""
    x = images()
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(np.asarray(augment.random_shift(key, x, 0)), np.asarray(x))
    out = augment.random_affine(key, x, max_rotation_deg=0.0, max_shift=0.0, max_scale=0.0)
    # Integer sample points: bilinear weights are exactly (1, 0), so the copy is exact.
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_shift_moves_known_pixel():
    """A single bright pixel moves by the drawn (dy, dx) and keeps its value; zero fill."""
    x = jnp.zeros((8, 10, 10), jnp.float32).at[:, 5, 5].set(0.75)
    key = jax.random.PRNGKey(3)
    out = np.asarray(augment.random_shift(key, x, max_shift=2))
    # The same draw the implementation makes (documented: uniform ints in [-2, 2]).
    shifts = np.asarray(jax.random.randint(key, (8, 2), -2, 3))
    for img, (dy, dx) in zip(out, shifts):
        assert img[5 + dy, 5 + dx] == np.float32(0.75)
        assert np.count_nonzero(img) == 1
    assert len({tuple(s) for s in shifts}) > 1


def test_shift_zero_fills_edges():
    """Content shifted off the edge is lost and the uncovered border is 0."""
    x = jnp.ones((50, 6, 6), jnp.float32)
    out = np.asarray(augment.random_shift(jax.random.PRNGKey(1), x, max_shift=1))
    sums = out.reshape(50, -1).sum(1)
    assert set(np.unique(sums)) <= {36.0, 30.0, 25.0}  # no shift, one axis, both axes
    assert sums.min() < 36.0


def test_affine_translation_matches_bilinear_reference():
    """With rotation and scale disabled, random_affine is a bilinear translation by the drawn t."""
    x = images(n=1, side=12)
    # Recompute the translation the implementation draws (documented key split), then
    # compare with a hand-written bilinear sampler at source = q - t.
    key = jax.random.PRNGKey(7)
    out = np.asarray(augment.random_affine(key, x, 0.0, 2.0, 0.0))
    t = np.asarray(jax.random.uniform(jax.random.split(key, 3)[2], (1, 2), jnp.float32, -1.0, 1.0) * 2.0)[0]
    src = np.asarray(x[0], np.float64)
    ref = np.zeros((12, 12))
    for i in range(12):
        for j in range(12):
            y, xx = i - t[0], j - t[1]
            y0, x0 = int(np.floor(y)), int(np.floor(xx))
            fy, fx = y - y0, xx - x0
            acc = 0.0
            for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                for xc, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                    if 0 <= yy < 12 and 0 <= xc < 12:
                        acc += wy * wx * src[yy, xc]
            ref[i, j] = acc
    np.testing.assert_allclose(out[0], ref, atol=1e-5)  # float32 sampling, values <= 1


@pytest.mark.usefixtures("x64")  # also checks that float64 images stay float64
@pytest.mark.parametrize("fn", [augment.random_shift, augment.random_affine, augment.random_elastic])
def test_keys_shapes_dtypes_jit_range(fn):
    """Under jit: different keys differ, same key repeats, flattened input gives the same
    result, dtype kept (float32 and float64), values stay in [0, 1]."""
    x = images(n=8)
    k1, k2 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    jfn = jax.jit(fn)
    a, b = jfn(k1, x), jfn(k2, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(jfn(k1, x)), np.asarray(a))
    flat = jfn(k1, x.reshape(8, 784))
    assert flat.shape == (8, 784)
    # Separate compilations may fuse the float32 coordinate math differently: a few ulps in a
    # sample location times pixel differences <= 1 is ~1e-6; 1e-5 still catches real changes.
    np.testing.assert_allclose(np.asarray(flat).reshape(8, 28, 28), np.asarray(a), atol=1e-5)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    ones = jfn(k2, jnp.ones((8, 28, 28), jnp.float32))
    assert float(ones.max()) <= 1.0 and float(ones.min()) >= 0.0
    assert jfn(k1, x.astype(jnp.float64)).dtype == jnp.float64


def test_bad_shapes_raise():
    """Non-square flattened input or wrong rank raises ValueError."""
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError):
        augment.random_shift(key, jnp.zeros((2, 783)))
    with pytest.raises(ValueError):
        augment.random_affine(key, jnp.zeros((2, 3, 4, 5)))


# ---------------------------------------------------------------- elastic distortion (Simard et al. 2003)


def test_elastic_zero_alpha_is_identity():
    """alpha 0: no displacement, the bilinear weights are exactly (1, 0), so every image comes back exactly."""
    x = images(n=4)
    out = augment.random_elastic(jax.random.PRNGKey(0), x, sigma=4.0, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_elastic_field_is_scipys_gaussian_filter_of_the_noise():
    """The field is the U(-1, 1) noise (16-bit halves of one 32-bit draw per pixel of the wider grid)
    smoothed by scipy.ndimage.gaussian_filter (same truncation, full support) times alpha: an independent
    reference for the smoothing."""
    from scipy.ndimage import gaussian_filter

    key, n, side, sigma, alpha = jax.random.PRNGKey(3), 2, 12, 1.5, 7.0
    r = (len(augment.gaussian_kernel(sigma)) - 1) // 2
    assert r == int(4.0 * sigma + 0.5)
    bits = np.asarray(jax.random.bits(key, (n, side + 2 * r, side + 2 * r), jnp.uint32))
    noise = (np.stack([bits >> 16, bits & 0xFFFF], axis=1) + 0.5) / 32768 - 1.0  # the documented 16-bit halves
    ref = np.stack([[gaussian_filter(noise[i, c], sigma, mode="constant")[r:-r, r:-r] for c in range(2)]
                    for i in range(n)]) * alpha
    out = np.asarray(augment.elastic_field(key, n, side, sigma, alpha))
    np.testing.assert_allclose(out, ref, atol=2e-5)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_elastic_field_scale_and_smoothness(sigma):
    """Every pixel's displacement has mean 0 and standard deviation alpha * sum(k^2) / sqrt(3); neighbours
    correlate as the kernel's autocorrelation says (0.78 at sigma 1, 0.98 at sigma 4: smoother with sigma)."""
    alpha = 34.0
    d = np.asarray(augment.elastic_field(jax.random.PRNGKey(1), 128, 28, sigma, alpha), np.float64)
    k = augment.gaussian_kernel(sigma)
    std = alpha * np.sqrt(np.sum(k ** 2) ** 2 / 3.0)
    assert abs(d.mean()) < 0.05 * std
    assert d.std() == pytest.approx(std, rel=0.05)
    assert d[:, :, :3].std() == pytest.approx(std, rel=0.1)  # the border rows too: full support everywhere
    lag1 = np.sum(k[:-1] * k[1:]) / np.sum(k ** 2)
    along_rows = np.mean(d[:, :, 1:, :] * d[:, :, :-1, :]) / d.var()
    along_cols = np.mean(d[:, :, :, 1:] * d[:, :, :, :-1]) / d.var()
    assert along_rows == pytest.approx(lag1, abs=0.03) and along_cols == pytest.approx(lag1, abs=0.03)
    assert abs(np.mean(d[:, 0] * d[:, 1])) / d.var() < 0.05  # dy and dx are independent draws


def test_elastic_samples_bilinearly_at_the_displaced_grid():
    """Output pixel (i, j) is scipy's bilinear sample of the input at (i + dy, j + dx), zero outside."""
    from scipy.ndimage import map_coordinates

    x = images(n=2, side=14)
    key = jax.random.PRNGKey(5)
    out = np.asarray(augment.random_elastic(key, x, sigma=2.0, alpha=8.0))
    d = np.asarray(augment.elastic_field(key, 2, 14, 2.0, 8.0), np.float64)
    rows, cols = np.meshgrid(np.arange(14.0), np.arange(14.0), indexing="ij")
    for i in range(2):
        ref = map_coordinates(np.asarray(x[i], np.float64), [rows + d[i, 0], cols + d[i, 1]], order=1,
                              mode="grid-constant", cval=0.0)  # zeros beyond the edge, interpolated as jax does
        np.testing.assert_allclose(out[i], ref, atol=1e-5)
    assert np.abs(out - np.asarray(x)).max() > 0.1  # it did move pixels


def test_elastic_shapes_keys_and_range():
    """Flattened or not, float32 stays float32, a new key gives new images, values stay in [0, 1]."""
    x = images(n=4)
    a = augment.random_elastic(jax.random.PRNGKey(0), x.reshape(4, 784))
    b = augment.random_elastic(jax.random.PRNGKey(1), x.reshape(4, 784))
    assert a.shape == (4, 784) and a.dtype == jnp.float32
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    with pytest.raises(ValueError, match="sigma"):
        augment.random_elastic(jax.random.PRNGKey(0), x, sigma=0.0)


def test_fit_trains_with_elastic_distortion(synthetic):
    """--augment elastic trains the MLP (the loss falls, accuracy beats chance); the CNN's spec distorts its
    minibatches the same way; the elastic numbers are refused without the elastic augmentation."""
    from jaxmlp.config import ConfigError, TrainConfig
    from jaxmlp.runs import fit
    from jaxmlp.spec import _augment, spec_for

    config = TrainConfig(augment="elastic", elastic_sigma=3.0, elastic_alpha=20.0, hidden=(64,), init="he",
                         optimizer="adam", lr=3e-3, epochs=3, batch_size=64)
    result = fit(config, synthetic)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.test_accuracy > 0.5
    spec = spec_for(TrainConfig(arch="cnn", init="he", augment="elastic", elastic_alpha=10.0), 512)
    assert (spec.elastic_sigma, spec.elastic_alpha) == (4.0, 10.0)
    x = images(n=3).reshape(3, 784)
    assert not np.array_equal(np.asarray(_augment(spec, jax.random.PRNGKey(0), x)), np.asarray(x))
    assert spec_for(TrainConfig(augment="shift"), 512) == spec_for(TrainConfig(augment="shift"), 512)
    with pytest.raises(ConfigError, match="elastic_sigma would be ignored"):
        TrainConfig(augment="affine", elastic_sigma=2.0)


def test_the_augmentation_picture(tmp_path):
    """plots.plot_augmentations: one PNG with the shift, affine and elastic rows of one digit."""
    pytest.importorskip("matplotlib")
    from jaxmlp import plots

    digit = np.zeros((28, 28), np.float32)
    digit[6:22, 12:16] = 1.0  # a "1"
    path = plots.plot_augmentations(digit, tmp_path / "augment.png", copies=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plots.augmentation_figure(digit, [("a", np.stack([digit] * 4)), ("b", np.stack([digit] * 4))])
    assert len(fig.axes) == 2 * 5
