"""EfficientNet-Lite0…4 (Tan & Le; the TensorFlow "lite" builder): MobileNetV2 blocks, ReLU6, no squeeze-excite,
stem and head not scaled, first and last stage not repeated more.

Two styles, because the weights that exist were trained in two ways and each expects its own arithmetic:
  * "tf": TensorFlow's "SAME" padding (a strided convolution pads less on the top/left than on the bottom/right)
    and batch norm epsilon 1e-3 — the reference definition, the efficientnet-lite-pytorch package and timm's
    tf_efficientnet_lite* weights, all ported from TensorFlow;
  * "pytorch": symmetric padding k // 2 and epsilon 1e-5 — timm's own efficientnet_lite0.
The padding is computed from the traced input shape, so any input size works and the exported graph holds plain
numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .depthwise import depthwise_conv
from .layers import BatchNorm, Conv, conv_kaiming_fan_out, explain_point

# (repeats, kernel, stride, expansion, input channels, output channels) of Lite0, the builder's block strings
# r1_k3_s11_e1_i32_o16 … r1_k3_s11_e6_i192_o320.
LITE_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# (width, depth, resolution, dropout) of lite0 … lite4, as the TensorFlow builder gives them.
LITE_SCALING: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}
STYLES = {"tf": 1e-3, "pytorch": 1e-5}  # style → batch norm epsilon
# The stage (numbered from the pixels) after which each block group ends a resolution: Grad-CAM's stages.
_CAM_AFTER_GROUP = {0: 1, 1: 2, 2: 3, 4: 4}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 but never more than 10 % down (the builder's rule)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def lite_stages(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """The block groups of a scaled Lite: repeats by ceil(depth × r) but for the first and the last group, channels
    by round_filters but the first group's input (the unscaled 32-channel stem)."""
    out = []
    for i, (r, k, s, e, cin, cout) in enumerate(LITE_BLOCKS):
        repeats = r if i in (0, len(LITE_BLOCKS) - 1) else math.ceil(depth * r)
        cin = 32 if i == 0 else round_filters(cin, width)
        out.append((repeats, k, s, e, cin, round_filters(cout, width)))
    return out


def _pads(size: int, kernel: int, stride: int, style: str) -> tuple[int, int]:
    """Rows (or columns) to add before and after: TF "SAME" (the extra one after) or symmetric k // 2."""
    if style == "pytorch":
        return kernel // 2, kernel // 2
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
    """One k×k filter per channel, no bias: the kernel is k×k×1×C, as nn.Conv(feature_group_count=C) holds it, but
    computed by models/depthwise.py (XLA:CPU's grouped convolution is many times slower)."""

    kernel_size: int
    stride: int
    padding: tuple[tuple[int, int], tuple[int, int]]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", conv_kaiming_fan_out, (k, k, 1, x.shape[-1]), jnp.float32)
        return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)


class _ConvBN(nn.Module):
    """A bias-free convolution (depthwise when `depthwise`), batch norm and optionally ReLU6."""

    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    act: bool = True
    style: str = "tf"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        pads = tuple(_pads(x.shape[d], self.kernel, self.stride, self.style) for d in (1, 2))
        if self.depthwise:
            x = DepthwiseConv(self.kernel, self.stride, pads, dtype=self.dtype, name="conv")(x)
        else:
            x = Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), padding=pads,
                     use_bias=False, kernel_init=conv_kaiming_fan_out, dtype=self.dtype, name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=0.99, epsilon=STYLES[self.style], dtype=self.dtype,
                      name="bn")(x)
        return jnp.clip(x, 0, 6) if self.act else x


class MBConv(nn.Module):
    """Inverted residual: 1×1 expansion (none when the ratio is 1), depthwise k×k, 1×1 projection; the input added
    back (with stochastic depth while training) when stride and channels allow."""

    features: int
    kernel: int
    stride: int
    expand: int
    drop_rate: float = 0.0
    style: str = "tf"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = dict(style=self.style, dtype=self.dtype)
        y = x
        if self.expand != 1:
            y = _ConvBN(x.shape[-1] * self.expand, name="expand", **conv)(y, train)
        y = _ConvBN(y.shape[-1], self.kernel, self.stride, depthwise=True, name="depthwise", **conv)(y, train)
        y = _ConvBN(self.features, act=False, name="project", **conv)(y, train)
        if self.stride != 1 or x.shape[-1] != self.features:
            return y
        if train and self.drop_rate > 0:
            keep = 1.0 - self.drop_rate
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1, 1))
            y = jnp.where(mask, y / keep, jnp.zeros((), y.dtype))
        return x + y


class EfficientNetLite(nn.Module):
    num_classes: int = 1000
    width: float = 1.0
    depth: float = 1.0
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    style: str = "tf"
    dtype: jnp.dtype = jnp.float32

    def groups(self) -> Sequence[tuple[int, int, int, int, int, int]]:
        return lite_stages(self.width, self.depth)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.style not in STYLES:
            raise ValueError(f"unknown EfficientNet-Lite style {self.style!r}; choose one of: {', '.join(STYLES)}")
        conv = dict(style=self.style, dtype=self.dtype)
        x = _ConvBN(32, 3, 2, name="stem", **conv)(x.astype(self.dtype), train)
        groups = self.groups()
        total, index = sum(g[0] for g in groups), 0
        for g, (repeats, kernel, stride, expand, _, cout) in enumerate(groups):
            for r in range(repeats):
                rate = self.drop_connect_rate * index / total  # the reference's linear rule, block by block
                x = MBConv(cout, kernel, stride if r == 0 else 1, expand, rate, name=f"blocks_{index}", **conv)(
                    x, train)
                index += 1
            if g in _CAM_AFTER_GROUP:
                x = explain_point(self, x, _CAM_AFTER_GROUP[g])
        x = _ConvBN(1280, name="head", **conv)(x, train)
        x = explain_point(self, x, 5)  # the last convolution
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)
