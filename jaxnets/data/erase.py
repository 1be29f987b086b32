"""Random erasing (Zhong et al., 2017; timm's "pixel" mode) on the normalised batch, inside the jitted step: with
probability `p` an image gets one rectangle of 2–33 % of its area, aspect ratio 0.3–3.3, filled with standard
normal noise (the statistics of a normalised image). Padded rows are left alone."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["random_erase"]


def _one(img, key, field, keep, p: float):
    """One image with its rectangle (when drawn, and when the row is real) filled from its own window of `field`."""
    h, w, _ = img.shape
    k_do, k_area, k_ratio, k_y, k_x, k_window = jax.random.split(key, 6)
    area = jax.random.uniform(k_area, (), minval=0.02, maxval=1 / 3) * h * w
    ratio = jnp.exp(jax.random.uniform(k_ratio, (), minval=math.log(0.3), maxval=math.log(1 / 0.3)))
    eh = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, h)
    ew = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, w)
    y0 = jnp.floor(jax.random.uniform(k_y) * (h - eh + 1))
    x0 = jnp.floor(jax.random.uniform(k_x) * (w - ew + 1))
    ys, xs = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
    inside = (ys >= y0) & (ys < y0 + eh) & (xs >= x0) & (xs < x0 + ew) & jax.random.bernoulli(k_do, p) & keep
    wy, wx = jax.random.randint(k_window, (2,), 0, jnp.asarray([h, w]))
    noise = jax.lax.dynamic_slice(field, (wy, wx, 0), img.shape)
    return jnp.where(inside, noise, img)


def random_erase(images, mask, key, p: float):
    """Normalised images [B,H,W,C] → the same with rectangles erased; identity for p = 0.

    The noise of each image is a random window of one shared field of 2H × 2W standard normals: independent
    pixels within an image, as timm's, from 4/B of the random numbers of a field per image (those took 30 ms of
    a 128 px batch of 64). Windows may overlap, so two images of a batch can carry shifted copies of the same
    noise; within an image it is independent. One `where` per pixel, so that XLA does not compute the
    augmentation before it twice."""
    if p <= 0:
        return images
    b, h, w, c = images.shape
    k_field, k_images = jax.random.split(key)
    field = jax.random.normal(k_field, (2 * h, 2 * w, c), images.dtype)
    return jax.vmap(lambda img, k, keep: _one(img, k, field, keep, p))(images, jax.random.split(k_images, b), mask)
