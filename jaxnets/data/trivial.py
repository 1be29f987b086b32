"""TrivialAugmentWide (Müller & Hutter, 2021) on device: each image gets one operation, drawn uniformly from the
fourteen of torchvision's `TrivialAugmentWide`, at a magnitude drawn uniformly from its 31 bins (a random sign
for the signed ones).

Chosen over RandAugment because it has no hyperparameter to tune (RandAugment's N and M need a search per data
set) and matches or beats it in the paper's comparisons: the right default for a library whose users should
not have to tune augmentation. Differences from torchvision, on purpose: translations are a share of the image
(up to 32/224 of its side, torchvision's wide range at 224 px) so that 32-pixel images are not pushed out of
the frame; geometry samples the edge pixels instead of black, and shears about the centre (torchvision: the corner).

Under `vmap` a per-image choice computes every branch and selects, so the five geometric operations share one
affine resample and the colour ones are cheap element-wise maps (sharpness one 3×3 blur, equalize one histogram).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .resample import bilinear  # one sampler for all geometry

__all__ = ["OPERATIONS", "augment_image", "trivial_augment"]

OPERATIONS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
              "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31


def _grey(img):
    if img.shape[-1] == 1:
        return img
    return (img @ jnp.asarray([0.299, 0.587, 0.114], img.dtype))[..., None]


def _blend(a, b, factor):
    """torchvision's blend: factor 0 → b, 1 → a, extrapolated beyond, clipped to [0, 1]."""
    return jnp.clip(b + factor * (a - b), 0.0, 1.0)


def _sharpen(img, factor):
    """PIL's sharpness: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13, borders kept. The smoothing
    is nine shifted slices, not a depthwise convolution: XLA:CPU ran that 15× slower (75 vs 5 ms per batch of 64
    at 128 px)."""
    h, w, _ = img.shape
    padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
    smooth = (sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) + 4 * img) / 13
    inner = (jnp.arange(h)[:, None, None] > 0) & (jnp.arange(h)[:, None, None] < h - 1) & \
            (jnp.arange(w)[None, :, None] > 0) & (jnp.arange(w)[None, :, None] < w - 1)
    return _blend(img, jnp.where(inner, smooth, img), factor)


def _equalize(img):
    """PIL's ImageOps.equalize per channel: a look-up table from the cumulative histogram of the 256 levels,
    step = (pixels − those at the top level) // 255, unchanged where the step is 0 (a constant channel).
    The histogram is one scatter-add (a sort of the pixels made TrivialAugment 10× slower than the step it feeds)."""
    h, w, c = img.shape
    levels = jnp.clip(jnp.round(img * 255), 0, 255).astype(jnp.int32).reshape(h * w, c)
    counts = jnp.zeros(256 * c, jnp.int32).at[(levels * c + jnp.arange(c)).ravel()].add(1).reshape(256, c)
    below = jnp.cumsum(counts, axis=0) - counts  # pixels under each level
    highest = 255 - jnp.argmax(counts[::-1] > 0, axis=0)  # the top level present, per channel
    step = (h * w - jnp.take_along_axis(counts, highest[None], axis=0)[0]) // 255
    table = jnp.minimum((below + step // 2) // jnp.maximum(step, 1), 255)
    out = jnp.where(step > 0, jnp.take_along_axis(table, levels, axis=0), levels) / 255
    return out.reshape(h, w, c).astype(img.dtype)


def _autocontrast(img):
    low, high = img.min(axis=(0, 1), keepdims=True), img.max(axis=(0, 1), keepdims=True)
    return jnp.where(high > low, (img - low) / jnp.maximum(high - low, 1e-6), img)


def _affine(img, op, m):
    """Shear, translate or rotate (or nothing) by magnitude m ∈ [-1, 1], one bilinear resample about the centre."""
    h, w, _ = img.shape
    shear, shift, angle = 0.99 * m, m * (32.0 / 224.0), jnp.deg2rad(135.0 * m)
    a = jnp.select([op == 1, op == 2, op == 5],
                   [jnp.asarray([[1.0, shear], [0.0, 1.0]]), jnp.asarray([[1.0, 0.0], [shear, 1.0]]),
                    jnp.asarray([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])],
                   jnp.eye(2))
    t = jnp.select([op == 3, op == 4], [jnp.asarray([shift * w, 0.0]), jnp.asarray([0.0, shift * h])], jnp.zeros(2))
    oy, ox = jnp.meshgrid(jnp.arange(h) + 0.5 - h / 2, jnp.arange(w) + 0.5 - w / 2, indexing="ij")
    # source (x, y) = A · (output x, y) - t, in image coordinates about the centre
    sx = a[0, 0] * ox + a[0, 1] * oy - t[0]
    sy = a[1, 0] * ox + a[1, 1] * oy - t[1]
    return bilinear(img, sy + h / 2 - 0.5, sx + w / 2 - 0.5)


def augment_image(img, key):
    """One float [0, 1] image [H,W,C] with one TrivialAugmentWide operation applied (vmapped by the callers)."""
    k_op, k_bin, k_sign = jax.random.split(key, 3)
    op = jax.random.randint(k_op, (), 0, len(OPERATIONS))
    level = jax.random.randint(k_bin, (), 0, BINS) / (BINS - 1)  # 0 … 1
    m = level * jnp.where(jax.random.bernoulli(k_sign), -1.0, 1.0)  # signed magnitude, −1 … 1
    geometric = _affine(img, op, m)
    bits = 8 - jnp.round(level * 6)  # 8 … 2 bits, as torchvision's bins
    step = 2.0 ** (8 - bits)
    colours = [
        _blend(img, jnp.zeros_like(img), 1 + 0.99 * m),  # brightness
        _blend(img, _grey(img), 1 + 0.99 * m),  # color (saturation)
        _blend(img, jnp.broadcast_to(_grey(img).mean(), img.shape), 1 + 0.99 * m),  # contrast
        _sharpen(img, 1 + 0.99 * m),
        jnp.floor(jnp.round(img * 255) / step) * step / 255,  # posterize
        jnp.where(img >= 1.0 - level, 1.0 - img, img),  # solarize: threshold 1 … 0
        _autocontrast(img),
        _equalize(img),
    ]
    candidates = [img, *[geometric] * 5, *colours]  # identity, the five geometric ones, the colour ones
    return jnp.select([op == i for i in range(len(OPERATIONS))], candidates, img)


def trivial_augment(images, key):
    """float [0, 1] images [B,H,W,C] → each with one TrivialAugmentWide operation applied."""
    return jax.vmap(augment_image)(images, jax.random.split(key, images.shape[0]))
