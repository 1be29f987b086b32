"""VGG 11/13/16/19, with or without BatchNorm, in the torchvision layout and initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from .layers import BatchNorm, Conv, Dense, adaptive_avg_pool, conv_kaiming_fan_out, explain_point, flatten, max_pool

# "M" is a 2×2/2 max pool, a number is a 3×3 conv with that many filters (torchvision's cfgs A, B, D, E).
VGG_CONFIGS: dict[int, tuple] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    num_classes: int = 1000
    config: Sequence = VGG_CONFIGS[16]
    batch_norm: bool = False
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        stage = 0
        for v in self.config:
            if v == "M":
                stage += 1
                x = max_pool(explain_point(self, x, stage), 2, 2)
                continue
            x = Conv(v, (3, 3), padding=[(1, 1), (1, 1)], kernel_init=conv_kaiming_fan_out, dtype=self.dtype)(x)
            if self.batch_norm:
                x = BatchNorm(use_running_average=not train, dtype=self.dtype)(x)
            x = nn.relu(x)
        x = flatten(adaptive_avg_pool(x, (7, 7)))
        dense = lambda n: Dense(n, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype)  # noqa: E731
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(dense(4096)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(dense(4096)(x)))
        return dense(self.num_classes)(x).astype(jnp.float32)
