"""Data augmentation on the device: pure, jittable, fresh randomness per call from a key.

Both functions take a batch of images shaped ``(N, H, W)`` or flattened ``(N, side*side)``
(square images; ``side`` defaults to ``isqrt(D)``, i.e. 28 for MNIST's 784) and return the
same shape and dtype. Each image draws its own transform. Pixels that come from outside the
image are filled with 0 (MNIST's background), so augmented [0, 1] images stay in [0, 1].

Typical use inside a jitted training step::

    key, aug_key = jax.random.split(key)
    images = random_affine(aug_key, images)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

__all__ = ["random_shift", "random_affine"]


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
    ``[-max_shift, max_shift]`` (positive = down/right), zero fill.

    images: (N, H, W) or (N, side*side), float. ``max_shift`` is a python int (it fixes the
    padding shape). Returns the same shape and dtype."""
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
    """Random rotation, isotropic scale and translation per image, bilinear sampling.

    Per image: angle ~ U(-max_rotation_deg, max_rotation_deg) degrees about the image
    centre, scale ~ U(1 - max_scale, 1 + max_scale), shift (dy, dx) ~ U(-max_shift,
    max_shift) pixels (continuous). Each output pixel samples the input at the inverse-mapped
    location; outside the image reads 0. images: (N, H, W) or (N, side*side), float;
    returns the same shape and dtype. The result is clipped to the hull of 0 and the input's
    range, removing the few-ulp overshoot of bilinear weights (a convex combination can't
    leave it mathematically)."""
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
