"""MixUp and CutMix on a batch, inside the jitted step: images blended (MixUp) or a box pasted (CutMix) from a
partner image, the targets mixed in the same proportion.

Each real row is paired with the next real row of the batch (cyclically; padded rows are never a partner and
are left as they are). One mixing weight per batch, as timm does: `lam` ~ Beta(alpha, alpha); CutMix cuts a box
of area ≈ (1 - lam) and then sets lam to the share actually kept, so the label matches the pixels exactly.
With both on, each batch picks one of them with probability `switch` for CutMix. Targets are class
probabilities [B, K]; for a one-logit binary head they are the probability of class 1, [B].
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["MixSpec", "mix_batch", "partners", "soft_targets"]


@dataclass(frozen=True)
class MixSpec:
    mixup: float = 0.0  # Beta alpha of MixUp; 0 = off
    cutmix: float = 0.0  # Beta alpha of CutMix; 0 = off
    switch: float = 0.5  # with both on: the probability that a batch uses CutMix

    @property
    def is_identity(self) -> bool:
        return self.mixup <= 0 and self.cutmix <= 0


def partners(mask: jax.Array) -> jax.Array:
    """For each row, the row it is mixed with: the next real row, cyclically; a padded row is its own partner."""
    n = mask.shape[0]
    order = jnp.argsort(~mask, stable=True)  # real rows first, in batch order
    count = jnp.maximum(jnp.sum(mask), 1)
    position = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    partner = order[(position + 1) % count]
    return jnp.where(mask, partner, jnp.arange(n))


def soft_targets(labels: jax.Array, num_classes: int, binary: bool) -> jax.Array:
    """Integer labels as probabilities: one-hot [B, K], or P(class 1) [B] for a binary head."""
    if binary:
        return labels.astype(jnp.float32)
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _box(key: jax.Array, lam: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """A box of area ≈ (1 - lam) × H × W centred uniformly (clipped at the borders): (inside [H, W], kept share)."""
    ky, kx = jax.random.split(key)
    cut = jnp.sqrt(1.0 - lam)
    ch, cw = jnp.round(h * cut), jnp.round(w * cut)
    cy = jax.random.randint(ky, (), 0, h).astype(jnp.float32)
    cx = jax.random.randint(kx, (), 0, w).astype(jnp.float32)
    y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch - ch // 2, 0, h)
    x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw - cw // 2, 0, w)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return inside, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def _rows(images: jax.Array, index: jax.Array) -> jax.Array:
    """images[index]. On CPU as a product with a 0/1 permutation matrix at full precision, not a gather: XLA:CPU
    fused the gather with the augmentation that made `images` and ran all of it twice per pixel (160 vs 57 ms per
    batch of 64 at 128 px); a dot takes its input materialised, and copies finite pixels exactly (B² × pixels
    multiply-adds: ~1 % of a ResNet step). Elsewhere the gather."""
    if jax.default_backend() != "cpu":
        return images[index]
    permutation = jax.nn.one_hot(index, images.shape[0], dtype=images.dtype)
    flat = jnp.matmul(permutation, images.reshape(images.shape[0], -1), precision=jax.lax.Precision.HIGHEST)
    return flat.reshape(images.shape)


def mix_batch(images: jax.Array, targets: jax.Array, mask: jax.Array, key: jax.Array, spec: MixSpec
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(images, targets, lam) mixed: images [B,H,W,C] float, targets [B, K] or [B] probabilities."""
    if spec.is_identity:
        return images, targets, jnp.ones(())
    k_lam_mix, k_lam_cut, k_box, k_switch = jax.random.split(key, 4)
    other = partners(mask)
    h, w = images.shape[1:3]
    use_cut = jnp.asarray(spec.cutmix > 0)
    if spec.mixup > 0 and spec.cutmix > 0:
        use_cut = jax.random.uniform(k_switch) < spec.switch
    lam_mix = jax.random.beta(k_lam_mix, spec.mixup, spec.mixup) if spec.mixup > 0 else jnp.ones(())
    lam_cut = jax.random.beta(k_lam_cut, spec.cutmix, spec.cutmix) if spec.cutmix > 0 else jnp.ones(())
    inside, kept = _box(k_box, lam_cut, h, w)
    lam = jnp.where(use_cut, kept, lam_mix).astype(images.dtype)
    partner_images = _rows(images, other)
    blended = lam * images + (1 - lam) * partner_images
    pasted = jnp.where(inside[None, :, :, None], partner_images, images)
    mixed = jnp.where(use_cut, pasted, blended)
    new_targets = lam * targets + (1 - lam) * targets[other]
    keep = mask.reshape((-1,) + (1,) * (images.ndim - 1))
    return jnp.where(keep, mixed, images), jnp.where(mask.reshape((-1,) + (1,) * (targets.ndim - 1)), new_targets,
                                                      targets), lam
