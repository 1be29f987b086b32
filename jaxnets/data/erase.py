"""Random erasing (Zhong et al., 2017; timm's "pixel" mode) on the normalised batch, inside the jitted step: with
probability `p` an image gets one rectangle of 2–33 % of its area, aspect ratio 0.3–3.3, filled with standard
normal noise (the statistics of a normalised image). Padded rows are left alone."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["random_erase"]


def _one(img, key, p: float):
    h, w, _ = img.shape
    k_do, k_area, k_ratio, k_y, k_x, k_noise = jax.random.split(key, 6)
    area = jax.random.uniform(k_area, (), minval=0.02, maxval=1 / 3) * h * w
    ratio = jnp.exp(jax.random.uniform(k_ratio, (), minval=math.log(0.3), maxval=math.log(1 / 0.3)))
    eh = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, h)
    ew = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, w)
    y0 = jnp.floor(jax.random.uniform(k_y) * (h - eh + 1))
    x0 = jnp.floor(jax.random.uniform(k_x) * (w - ew + 1))
    ys, xs = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
    inside = (ys >= y0) & (ys < y0 + eh) & (xs >= x0) & (xs < x0 + ew) & jax.random.bernoulli(k_do, p)
    return jnp.where(inside, jax.random.normal(k_noise, img.shape, img.dtype), img)


def random_erase(images, mask, key, p: float):
    """Normalised images [B,H,W,C] → the same with rectangles erased; identity for p = 0."""
    if p <= 0:
        return images
    erased = jax.vmap(lambda img, k: _one(img, k, p))(images, jax.random.split(key, images.shape[0]))
    return jnp.where(mask[:, None, None, None], erased, images)
