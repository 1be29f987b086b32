"""The one bilinear sampler that all on-device geometry shares (augment.py's crops and rotations, trivial.py's
shears, translations and rotations): its own module so that both import it from below, neither from the other."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["bilinear"]


def bilinear(img, ys, xs):
    """Sample img[H,W,C] at float coordinates; outside the image reads the nearest edge pixel."""
    h, w, _ = img.shape
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0i, x0i = jnp.clip(y0.astype(jnp.int32), 0, h - 1), jnp.clip(x0.astype(jnp.int32), 0, w - 1)
    y1i, x1i = jnp.clip(y0i + 1, 0, h - 1), jnp.clip(x0i + 1, 0, w - 1)
    top = img[y0i, x0i] * (1 - wx) + img[y0i, x1i] * wx
    bottom = img[y1i, x0i] * (1 - wx) + img[y1i, x1i] * wx
    return top * (1 - wy) + bottom * wy
