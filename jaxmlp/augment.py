"""Data augmentation on the device: pure, jittable, fresh randomness per call from a key.

Each function takes a batch of images shaped ``(N, H, W)`` or flattened ``(N, side*side)``
(square images; ``side`` defaults to ``isqrt(D)``, i.e. 28 for MNIST's 784) and returns the
same shape and dtype: integer shifts (``random_shift``), rotation, scale and translation
(``random_affine``) or Simard et al.'s elastic distortion (``random_elastic``). Each image draws its
own transform. Pixels that come from outside the
image are filled with 0 (MNIST's background), so augmented [0, 1] images stay in [0, 1].

Typical use inside a jitted training step::

    key, aug_key = jax.random.split(key)
    images = random_affine(aug_key, images)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

__all__ = ["random_shift", "random_affine", "random_elastic", "elastic_field", "gaussian_kernel"]


def _as_images(images: jax.Array, side: int | None) -> tuple[jax.Array, tuple[int, ...]]:
    """(N, H, W) view of ``images`` plus the original shape to restore."""
    images = jnp.asarray(images)
    if images.ndim == 3:
        if side is not None and images.shape[1:] != (side, side):
            raise ValueError(f"images of shape {images.shape} do not match side={side}")
        return images, images.shape
    if images.ndim != 2:
        raise ValueError(f"images must be (N, H, W) or (N, side*side), got shape {images.shape}")
    d = images.shape[1]
    if side is None:
        side = math.isqrt(d)
    if side * side != d:
        raise ValueError(f"flattened images have {d} pixels, not side*side with side={side}")
    return images.reshape(images.shape[0], side, side), images.shape


def random_shift(key: jax.Array, images: jax.Array, max_shift: int = 2, *,
                 side: int | None = None) -> jax.Array:
    """Shift each image by integers ``(dy, dx)`` drawn uniformly from
    ``[-max_shift, max_shift]`` (positive = down/right) from ``key``, zero fill.

    Args:
        key: the PRNG key of the shifts.
        images: (N, H, W) or (N, side*side), float.
        max_shift: the largest shift in pixels, a python int (it fixes the padding shape).
        side: the image side of flattened input (default: isqrt(D)).

    Returns:
        The shifted images, same shape and dtype.
    """
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int, got {max_shift!r}")
    x, shape = _as_images(images, side)
    n, h, w = x.shape
    if max_shift == 0:
        return jnp.asarray(images)
    shifts = jax.random.randint(key, (n, 2), -max_shift, max_shift + 1)
    # Pad once, then each output is a window of the padded image: out[i] = in[i - dy].
    padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))

    def crop(img, s):
        return jax.lax.dynamic_slice(img, (max_shift - s[0], max_shift - s[1]), (h, w))

    return jax.vmap(crop)(padded, shifts).reshape(shape)


def random_affine(key: jax.Array, images: jax.Array, max_rotation_deg: float = 10.0,
                  max_shift: float = 2.0, max_scale: float = 0.1, *,
                  side: int | None = None) -> jax.Array:
    """Random rotation, isotropic scale and translation per image (drawn from ``key``), bilinear sampling.

    Per image: angle ~ U(-max_rotation_deg, max_rotation_deg) degrees about the image
    centre, scale ~ U(1 - max_scale, 1 + max_scale), shift (dy, dx) ~ U(-max_shift,
    max_shift) pixels (continuous). Each output pixel samples the input at the inverse-mapped
    location; outside the image reads 0.

    Args:
        key: the PRNG key of the draws.
        images: (N, H, W) or (N, side*side), float.
        max_rotation_deg: the largest rotation, in degrees.
        max_shift: the largest translation, in pixels.
        max_scale: the largest relative change of scale.
        side: the image side of flattened input (default: isqrt(D)).

    Returns:
        The warped images, same shape and dtype, clipped to the hull of 0 and the input's range
        (removing the few-ulp overshoot of bilinear weights; a convex combination can't leave it
        mathematically).
    """
    x, shape = _as_images(images, side)
    n, h, w = x.shape
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    angle = jax.random.uniform(k_rot, (n,), compute, -1.0, 1.0) * jnp.deg2rad(jnp.asarray(max_rotation_deg, compute))
    scale = 1.0 + jax.random.uniform(k_scale, (n,), compute, -1.0, 1.0) * max_scale
    shift = jax.random.uniform(k_shift, (n, 2), compute, -1.0, 1.0) * max_shift

    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=compute), jnp.arange(w, dtype=compute), indexing="ij")

    def warp(img, a, s, t):
        # Forward map: q = s R(a) (p - c) + c + t. Inverse: p = R(-a) (q - c - t) / s + c.
        yy = rows - cy - t[0]
        xx = cols - cx - t[1]
        cos, sin = jnp.cos(a), jnp.sin(a)
        src_y = (cos * yy + sin * xx) / s + cy
        src_x = (-sin * yy + cos * xx) / s + cx
        return map_coordinates(img.astype(compute), [src_y, src_x], order=1, mode="constant", cval=0.0)

    out = jax.vmap(warp)(x, angle, scale, shift)
    lo = jnp.minimum(jnp.min(x), 0).astype(compute)
    hi = jnp.maximum(jnp.max(x), 0).astype(compute)
    return jnp.clip(out, lo, hi).astype(x.dtype).reshape(shape)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian of standard deviation ``sigma`` (pixels), cut at ``truncate`` sigmas
    as ``scipy.ndimage.gaussian_filter`` cuts it: shape (2r + 1,) float64, r = int(truncate * sigma + 0.5).

    Args:
        sigma: the standard deviation in pixels, a positive python number (it fixes the kernel's length).
        truncate: the kernel's half-width in standard deviations.

    Returns:
        (2r + 1,) float64 weights summing to 1.
    """
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    radius = max(int(truncate * sigma + 0.5), 1)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def elastic_field(key: jax.Array, n: int, side: int, sigma: float = 4.0, alpha: float = 34.0,
                  dtype=jnp.float32) -> jax.Array:
    """Simard et al.'s (2003) displacement fields: per-pixel draws U(-1, 1), smoothed by a Gaussian of
    standard deviation ``sigma``, scaled by ``alpha``.

    The noise is drawn on a grid ``r`` pixels wider on every side (``r``: the kernel's radius) and the
    separable smoothing keeps only the fully covered part, so every pixel's displacement has the same
    distribution (standard deviation ``alpha * sum(k**2) / sqrt(3)`` for the 1-D kernel ``k``), at the
    borders too (a zero-padded filter weakens the field there). One 32-bit draw per pixel gives both
    components: its high and low 16 bits, each mapped to ``(u + 0.5) / 32768 - 1``, uniform on 65,536
    levels in (-1, 1) (half the random bits of two float draws; the smoothing averages hundreds of them).

    Args:
        key: the PRNG key of the draw.
        n: images (static).
        side: image side in pixels (static).
        sigma: the Gaussian's standard deviation in pixels, a python number (static: it sets the kernel).
        alpha: the scale, a number or a traced scalar (0: no displacement).
        dtype: a float dtype.

    Returns:
        (n, 2, side, side) of ``dtype``: the (dy, dx) displacement, in pixels, of every pixel of ``n``
        images.
    """
    k = gaussian_kernel(sigma)
    wide = side + len(k) - 1
    # Row i of the band matrix holds the kernel at columns i..i+2r: a 'valid' 1-D convolution as a matmul.
    band = np.zeros((side, wide))
    for i in range(side):
        band[i, i:i + len(k)] = k
    band = jnp.asarray(band, dtype)  # type: ignore[assignment]
    bits = jax.random.bits(key, (n, wide, wide), jnp.uint32)
    halves = jnp.stack([bits >> 16, bits & 0xFFFF], axis=1).astype(dtype)  # (n, 2, wide, wide)
    noise = (halves + 0.5) * (1.0 / 32768) - 1.0
    # Two large matmuls (along rows, then along columns) rather than 2n small ones: much faster on a CPU.
    high = jax.lax.Precision.HIGHEST
    rows = jnp.matmul(noise.reshape(-1, wide), band.T, precision=high).reshape(2 * n, wide, side)
    both = jnp.matmul(band, rows.transpose(1, 0, 2).reshape(wide, -1), precision=high)  # (side, 2n * side)
    smooth = both.reshape(side, 2 * n, side).transpose(1, 0, 2).reshape(n, 2, side, side)
    return jnp.asarray(alpha, dtype) * smooth


def random_elastic(key: jax.Array, images: jax.Array, sigma: float = 4.0, alpha: float = 34.0, *,
                   side: int | None = None) -> jax.Array:
    """Elastic distortion (Simard, Steinkraus & Platt 2003): each image is resampled, bilinearly, at
    its pixel grid moved by its own smooth random field (``elastic_field``); outside the image reads 0.

    Output pixel ``(i, j)`` reads the input at ``(i + dy[i, j], j + dx[i, j])``. Their best MNIST
    setting, sigma 4 and alpha 34, is the default: displacements of about 1.4 pixels (standard
    deviation) that vary over about sigma pixels. alpha 0 returns the input exactly.

    Args:
        key: the PRNG key; a new key gives new fields.
        images: (N, H, W) or (N, side*side), float.
        sigma: the smoothing's standard deviation in pixels (a python number: it sets the kernel length).
        alpha: the displacement scale in pixels (a number or a traced scalar).
        side: the image side of flattened input (default: isqrt(D)).

    Returns:
        The distorted images, same shape and dtype, clipped, as ``random_affine``, to the hull of 0 and
        the input's range.
    """
    x, shape = _as_images(images, side)
    n, h, w = x.shape
    if h != w:
        raise ValueError(f"random_elastic needs square images, got {h}x{w}")
    compute = jnp.promote_types(x.dtype, jnp.float32)
    field = elastic_field(key, n, h, sigma, alpha, compute)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=compute), jnp.arange(w, dtype=compute), indexing="ij")

    def warp(img, d):
        return map_coordinates(img.astype(compute), [rows + d[0], cols + d[1]], order=1, mode="constant", cval=0.0)

    out = jax.vmap(warp)(x, field)
    lo = jnp.minimum(jnp.min(x), 0).astype(compute)
    hi = jnp.maximum(jnp.max(x), 0).astype(compute)
    return jnp.clip(out, lo, hi).astype(x.dtype).reshape(shape)
