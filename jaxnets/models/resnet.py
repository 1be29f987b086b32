"""ResNet 18/34/50/101/152 in the torchvision layout (v1.5: the stride sits on the 3×3 conv)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from .layers import BatchNorm, Conv, Dense, conv_kaiming_fan_out, explain_point, max_pool


class _Block(nn.Module):
    """Shared by both block kinds: the BN factory and the projection shortcut."""

    filters: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: jnp.dtype = jnp.float32

    def conv(self, filters: int, kernel: int, strides: int = 1, name: str | None = None):
        pad = kernel // 2
        return Conv(
            filters, (kernel, kernel), (strides, strides), padding=[(pad, pad), (pad, pad)],
            use_bias=False, kernel_init=conv_kaiming_fan_out, dtype=self.dtype, name=name,
        )

    def norm(self, train: bool, last: bool = False, name: str | None = None):
        scale_init = nn.initializers.zeros if (last and self.zero_init_residual) else nn.initializers.ones
        return BatchNorm(use_running_average=not train, scale_init=scale_init, dtype=self.dtype, name=name)

    def shortcut(self, x, out_filters: int, train: bool):
        if x.shape[-1] == out_filters and self.strides == 1:
            return x
        x = self.conv(out_filters, 1, self.strides, name="downsample_conv")(x)
        return self.norm(train, name="downsample_bn")(x)


class BasicBlock(_Block):

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(self.norm(train)(self.conv(self.filters, 3, self.strides)(x)))
        y = self.norm(train, last=True)(self.conv(self.filters, 3)(y))
        return nn.relu(y + self.shortcut(x, self.filters, train))


class Bottleneck(_Block):

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(self.norm(train)(self.conv(self.filters, 1)(x)))
        y = nn.relu(self.norm(train)(self.conv(self.filters, 3, self.strides)(y)))
        y = self.norm(train, last=True)(self.conv(self.filters * 4, 1)(y))
        return nn.relu(y + self.shortcut(x, self.filters * 4, train))


class ResNet(nn.Module):
    num_classes: int = 1000
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: type[_Block] = BasicBlock
    zero_init_residual: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        x = Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                    kernel_init=conv_kaiming_fan_out, dtype=self.dtype, name="conv1")(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x)
        x = max_pool(nn.relu(x), 3, 2, padding=1)
        block = partial(self.block, zero_init_residual=self.zero_init_residual, dtype=self.dtype)
        for stage, blocks in enumerate(self.stage_sizes):
            for i in range(blocks):
                strides = 2 if stage > 0 and i == 0 else 1
                x = block(64 * 2**stage, strides, name=f"layer{stage + 1}_{i}")(x, train)
            x = explain_point(self, x, stage + 1)
        x = x.mean(axis=(1, 2))
        return Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)
