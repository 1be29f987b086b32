"""Data augmentation as pure jax functions on a batch, run inside the jitted train step.

Geometry (random resized crop, horizontal flip, rotation) is composed into one affine map per image and
applied with a single bilinear resample, so stacking transforms costs no more than one. Colour jitter
follows torchvision's ColorJitter. Everything is vmapped: no Python per image, deterministic given the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .resample import bilinear
from .trivial import augment_image as trivial_one


@dataclass(frozen=True)
class AugmentSpec:
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    flip: float = 0.0
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    trivial: bool = False  # then one TrivialAugmentWide operation per image (data/trivial.py)

    @property
    def is_identity(self) -> bool:
        return self == AugmentSpec()


PRESETS = {
    "none": AugmentSpec(),
    "flip": AugmentSpec(flip=0.5),
    # geometry without mirroring or colour: for digits and other things a flip would change
    "light": AugmentSpec(crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), rotation=10.0),
    # the classic AlexNet/VGG course recipe
    "classic": AugmentSpec(crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), flip=0.5, rotation=10.0,
                           brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
    # photos trained from scratch: random resized crops, mirroring, then TrivialAugmentWide (data/trivial.py)
    "trivial": AugmentSpec(crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, trivial=True),
}


def get_augment(name: str | AugmentSpec | None) -> AugmentSpec:
    if name is None:
        return PRESETS["none"]
    if isinstance(name, AugmentSpec):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def _geometry(img, key, spec: AugmentSpec):
    h, w, _ = img.shape
    k_area, k_ratio, k_y, k_x, k_flip, k_rot = jax.random.split(key, 6)
    area = jax.random.uniform(k_area, (), minval=spec.crop_scale[0], maxval=spec.crop_scale[1])
    low, high = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    log_ratio = jax.random.uniform(k_ratio, (), minval=low, maxval=high)
    ratio = jnp.exp(log_ratio)
    ch = jnp.clip(jnp.sqrt(area / ratio), 0.0, 1.0) * h  # crop height and width in pixels
    cw = jnp.clip(jnp.sqrt(area * ratio), 0.0, 1.0) * w
    cy = jax.random.uniform(k_y, (), minval=ch / 2, maxval=h - ch / 2)  # crop centre
    cx = jax.random.uniform(k_x, (), minval=cw / 2, maxval=w - cw / 2)
    flip = jnp.where(jax.random.uniform(k_flip) < spec.flip, -1.0, 1.0)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-spec.rotation, maxval=spec.rotation))
    # output pixel (i, j) → offset from the output centre → scale to crop, flip, rotate → source pixel
    oy, ox = jnp.meshgrid(jnp.arange(h) + 0.5 - h / 2, jnp.arange(w) + 0.5 - w / 2, indexing="ij")
    sy, sx = oy * (ch / h), ox * (cw / w) * flip
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    ys = cy + cos * sy - sin * sx - 0.5
    xs = cx + sin * sy + cos * sx - 0.5
    return bilinear(img, ys, xs)


def _grey(img):
    if img.shape[-1] == 1:
        return img
    return (img @ jnp.asarray([0.299, 0.587, 0.114]))[..., None]


def _hue_shift(img, shift):
    """Rotate hue by `shift` turns in the YIQ plane (a close, cheap stand-in for HSV hue rotation)."""
    to_yiq = jnp.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    theta = 2 * jnp.pi * shift
    c, s = jnp.cos(theta), jnp.sin(theta)
    rot = jnp.asarray([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    m = jnp.linalg.inv(to_yiq) @ rot @ to_yiq
    return img @ m.T


def _colour(img, key, spec: AugmentSpec):
    kb, kc, ks, kh = jax.random.split(key, 4)

    def factor(k, amount):
        return jax.random.uniform(k, (), minval=max(0.0, 1 - amount), maxval=1 + amount)

    if spec.brightness:
        img = jnp.clip(img * factor(kb, spec.brightness), 0, 1)
    if spec.contrast:
        img = jnp.clip((img - _grey(img).mean()) * factor(kc, spec.contrast) + _grey(img).mean(), 0, 1)
    if img.shape[-1] == 3:
        if spec.saturation:
            g = _grey(img)
            img = jnp.clip((img - g) * factor(ks, spec.saturation) + g, 0, 1)
        if spec.hue:
            img = jnp.clip(_hue_shift(img, jax.random.uniform(kh, (), minval=-spec.hue, maxval=spec.hue)), 0, 1)
    return img


def augment_batch(images, key, spec: AugmentSpec):
    """float [0, 1] images [B,H,W,C] → augmented images, same shape. Identity when spec is the default."""
    if spec.is_identity:
        return images
    keys = jax.random.split(key, images.shape[0])

    def one(img, k):
        kg, kc = jax.random.split(k)
        geometric = spec.crop_scale != (1.0, 1.0) or spec.crop_ratio != (1.0, 1.0) or spec.flip or spec.rotation
        if geometric:
            img = _geometry(img, kg, spec)
        if spec.trivial:
            img = trivial_one(img, jax.random.fold_in(kc, 1))
        return _colour(img, kc, spec)

    return jax.vmap(one)(images, keys)
