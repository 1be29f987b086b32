"""AlexNet in the torchvision layout (the one-GPU 64-192-384-256-256 variant)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .layers import Conv, Dense, adaptive_avg_pool, explain_point, flatten, max_pool


class AlexNet(nn.Module):
    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda f, k, s, p: Conv(f, (k, k), (s, s), padding=[(p, p), (p, p)], dtype=self.dtype)  # noqa: E731
        x = x.astype(self.dtype)
        x = max_pool(explain_point(self, nn.relu(conv(64, 11, 4, 2)(x)), 1), 3, 2)
        x = max_pool(explain_point(self, nn.relu(conv(192, 5, 1, 2)(x)), 2), 3, 2)
        x = nn.relu(conv(384, 3, 1, 1)(x))
        x = nn.relu(conv(256, 3, 1, 1)(x))
        x = max_pool(explain_point(self, nn.relu(conv(256, 3, 1, 1)(x)), 3), 3, 2)
        x = flatten(adaptive_avg_pool(x, (6, 6)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(Dense(4096, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(Dense(4096, dtype=self.dtype)(x))
        return Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
