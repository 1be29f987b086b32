"""Small building blocks shared by the model families.

They exist so that every family pools, activates and initialises the same way, and so that the
torchvision layouts (adaptive pooling, floor-mode max pooling) behave identically in JAX, including
on inputs smaller than torchvision itself accepts (AlexNet at 32×32).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "silu": nn.silu,
    "identity": lambda x: x,
}

# Weight initialisers by the names the course uses. "he" and "small" are plain normals (not truncated)
# so that the measured std is exactly what the lesson says: sqrt(2 / fan_in) and 0.01.
INITIALIZERS: dict[str, Callable] = {
    "he": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    "xavier": nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),
    "lecun": nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
    "small": nn.initializers.normal(0.01),
    "zeros": nn.initializers.zeros,
}

# torchvision's conv init (kaiming_normal_, mode="fan_out", relu) used by VGG and ResNet.
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def choose(table: dict, name: str, what: str):
    """Look a name up in a table, or fail with the list of valid names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(sorted(table))}")
    return table[name]


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Averaging weights of torch's AdaptiveAvgPool along one axis (start=floor, end=ceil)."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, out_hw: tuple[int, int]) -> Array:
    """torch.nn.AdaptiveAvgPool2d for NHWC input, as two small matmuls (exact, any input size)."""
    _, h, w, _ = x.shape
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:  # plain non-overlapping average: a reshape and a mean
        n, _, _, c = x.shape
        return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
    ph = jnp.asarray(_adaptive_pool_matrix(h, oh), x.dtype)
    pw = jnp.asarray(_adaptive_pool_matrix(w, ow), x.dtype)
    return jnp.einsum("nhwc,oh,pw->nopc", x, ph, pw)


def max_pool(x: Array, window: int, stride: int, padding: int = 0) -> Array:
    """torch.nn.MaxPool2d (floor mode). An input smaller than the window is padded up to it with -inf,
    so the classic ImageNet layouts still run on 32×32 images instead of failing."""
    _, h, w, _ = x.shape
    extra_h = max(0, window - (h + 2 * padding))
    extra_w = max(0, window - (w + 2 * padding))
    pads = ((padding, padding + extra_h), (padding, padding + extra_w))
    if any(p for pair in pads for p in pair):  # padded here, not by the pool: exporters (jax2onnx) drop a pool's pads
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return _max_pool_valid(x, window, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_valid(x: Array, window: int, stride: int) -> Array:
    """A VALID max pool whose gradient is computed from strided slices instead of select-and-scatter.

    The gradient is the same as lax's: each window's output gradient goes to the first of its maximal inputs in
    row-major order (torch does the same). XLA:CPU rewrites select-and-scatter into a reduce-window carrying one
    int32 index array per dimension plus a scatter: ResNet-18's stem pool took about a fifth of the whole training
    step that way (BENCHMARKS.md, the profile). Here it is `window²` comparisons and strided pads that XLA fuses
    into one loop."""
    return nn.max_pool(x, window_shape=(window, window), strides=(stride, stride), padding="VALID")


def _max_pool_fwd(x: Array, window: int, stride: int) -> tuple[Array, tuple[Array, Array]]:
    y = _max_pool_valid(x, window, stride)
    return y, (x, y)


def _window_views(x: Array, window: int, stride: int, out_hw: tuple[int, int]):
    """(dy, dx, view): for each offset in the window, the input elements at that offset of every window."""
    oh, ow = out_hw
    for dy in range(window):
        for dx in range(window):
            yield dy, dx, x[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride, :]


def _max_pool_bwd(window: int, stride: int, residuals: tuple[Array, Array], g: Array) -> tuple[Array]:
    x, y = residuals
    _, h, w, _ = x.shape
    oh, ow = y.shape[1:3]
    views = list(_window_views(x, window, stride, (oh, ow)))
    first = jnp.full(y.shape, len(views), jnp.int8 if len(views) < 127 else jnp.int32)
    for k in reversed(range(len(views))):  # the first offset (row-major) holding the window's maximum
        first = jnp.where(views[k][2] == y, jnp.asarray(k, first.dtype), first)
    first = jax.lax.optimization_barrier(first)  # computed once, not once per input element below
    zero = jnp.zeros((), g.dtype)
    grad = jnp.zeros(x.shape, g.dtype)
    for k, (dy, dx, _) in enumerate(views):
        spread = ((0, 0, 0), (dy, h - dy - stride * (oh - 1) - 1, stride - 1),
                  (dx, w - dx - stride * (ow - 1) - 1, stride - 1), (0, 0, 0))
        grad = grad + jax.lax.pad(jnp.where(first == k, g, zero), zero, spread)
    return (grad.astype(x.dtype),)


_max_pool_valid.defvjp(_max_pool_fwd, _max_pool_bwd)


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d's semantics in Flax's variable layout (params scale/bias, batch_stats mean/var).

    It differs from flax.linen.BatchNorm where torch does, so that ImageNet weights imported from torchvision
    keep training as they did there: the running variance is updated with the unbiased batch variance
    (n/(n-1)), and the batch statistics are computed in float32 in two passes (mean, then the mean squared
    deviation), whatever the compute dtype. momentum is Flax's (0.9 = torch's 0.1)."""

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = self.batch_moments(x.astype(jnp.float32))
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return self.scale_shift(x, mul.astype(self.dtype), (bias - mean * mul).astype(self.dtype)).astype(self.dtype)

    # The two pieces with reductions over the batch, as methods so that a backend can compute them its own way
    # (runtime/cpu.py does, intercepting them by name); the model's function stays the one written here.
    def batch_moments(self, x32: Array) -> tuple[Array, Array]:
        """Per-channel mean and (biased) variance over every axis but the last, in two passes."""
        axes = tuple(range(x32.ndim - 1))
        mean = x32.mean(axes)
        return mean, jnp.square(x32 - mean).mean(axes)

    def scale_shift(self, x: Array, mul: Array, shift: Array) -> Array:
        """x · mul + shift, per channel."""
        return x * mul + shift


def avg_pool2(x: Array) -> Array:
    """2×2/2 average pooling (floor mode) as a reduce_window. XLA:CPU keeps reduce_window out of its
    producer's loop fusion; a reshape+mean or strided-slice pool gets fused into the convolution before
    it and runs 3–4× slower there (LeNet-5: conv+relu+pool 3.7 ms vs 0.9 ms per batch of 64)."""
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


CAM_PREFIX = "cam_stage"  # a convolutional stage's output, where Grad-CAM may look: cam_stage1, cam_stage2, …


def explain_point(module: nn.Module, x: Array, stage: int) -> Array:
    """Mark `x` as the output of convolutional stage `stage` (1 = the first, nearest the pixels) for Grad-CAM: its
    value is sown into the "intermediates" collection and a zero perturbation is added so that its gradient can be
    taken. Both are no-ops unless those collections are asked for, so training and inference pay nothing; `init`
    creates no perturbation (its batch size would then bind every later `apply`)."""
    if module.is_initializing():
        return x
    name = f"{CAM_PREFIX}{stage}"
    module.sow("intermediates", name, x)
    return module.perturb(name, x)


def flatten(x: Array) -> Array:
    return x.reshape(x.shape[0], -1)


class PixelDense(nn.Dense):
    """nn.Dense whose input is the uint8 pixels themselves: `standardize` (the caller's one preprocessing
    function, pixels → model input) first, flattened, then the product. Its parameters are nn.Dense's, so a
    network's variables are the same whichever input it is given. It exists so that the runtime can compute a
    narrow first layer without writing the batch back as float32 first (runtime/native.py); everywhere else it is
    exactly standardize + nn.Dense."""

    standardize: Callable | None = None

    def __call__(self, pixels: Array) -> Array:
        return super().__call__(flatten(self.standardize(pixels)))
