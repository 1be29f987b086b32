"""Small building blocks shared by the model families.

They exist so that every family pools, activates and initialises the same way, and so that the
torchvision layouts (adaptive pooling, floor-mode max pooling) behave identically in JAX, including
on inputs smaller than torchvision itself accepts (AlexNet at 32×32).

`Conv`, `Dense`, `PixelDense` and `BatchNorm` compute with the functions of the current `LayerOps`: lax's and
jnp's own by default, everywhere (export, GPU, plain `jax.jit`). That table is the one extension point through
which a backend computes the same layers its own way: `jaxnets.runtime.jit` traces jaxnets' steps inside
`use_layer_ops(...)` with XLA:CPU's versions (runtime/cpu.py; docs/architecture.md, "The CPU fast path"). A new
model gets them by building its layers from these classes instead of flax's `nn.Conv` / `nn.Dense`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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


def _batch_moments(x32: Array) -> tuple[Array, Array]:
    """Per-channel mean and (biased) variance over every axis but the last, in two passes."""
    axes = tuple(range(x32.ndim - 1))
    mean = x32.mean(axes)
    return mean, jnp.square(x32 - mean).mean(axes)


def _bias_add(y: Array, bias: Array) -> Array:
    return y + bias


def _scale_shift(x: Array, mul: Array, shift: Array) -> Array:
    return x * mul + shift


def _no_pixel_kernel(pixels: Array, kernel: Array, bias: Array | None, standardize: Callable) -> None:
    return None


def _no_depthwise_kernel(x: Array, g: Array, k: int, stride: int, pads: tuple) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class LayerOps:
    """The array functions jaxnets' layers compute with; each replacement must compute the same values (to float
    rounding) and have the same signature as the default.

    - `conv_general_dilated`, `dot_general`: as in `jax.lax` (`Conv`; `Dense` and `PixelDense`);
    - `bias_add(y, bias)`: y + bias over the last axis (`Conv`'s bias);
    - `batch_moments(x32) -> (mean, var)` and `scale_shift(x, mul, shift)`: `BatchNorm`'s two reducing pieces;
    - `pixel_dense(pixels, kernel, bias, standardize)`: `PixelDense` straight from uint8 pixels, or None where the
      backend does not take that layer (then it is standardize + the product);
    - `depthwise_weight_grad(x, g, k, stride, pads)`: the k×k×1×C kernel gradient of models/depthwise.py's
      convolution, or None where the backend does not take it (then it is one reduction per tap)."""

    conv_general_dilated: Callable = jax.lax.conv_general_dilated
    dot_general: Callable = jax.lax.dot_general
    bias_add: Callable = _bias_add
    batch_moments: Callable = _batch_moments
    scale_shift: Callable = _scale_shift
    pixel_dense: Callable = _no_pixel_kernel
    depthwise_weight_grad: Callable = _no_depthwise_kernel


PLAIN_OPS = LayerOps()
_CURRENT_OPS: contextvars.ContextVar[LayerOps] = contextvars.ContextVar("jaxnets_layer_ops", default=PLAIN_OPS)


def current_layer_ops() -> LayerOps:
    """The `LayerOps` jaxnets' layers use now: `PLAIN_OPS` unless inside `use_layer_ops`."""
    return _CURRENT_OPS.get()


@contextlib.contextmanager
def use_layer_ops(ops: LayerOps) -> Iterator[None]:
    """Layers built or applied inside compute with `ops` (this thread / task only; read while a function is traced,
    so wrap the tracing: `jax.jit(f)` compiled inside keeps the ops it was traced with)."""
    token = _CURRENT_OPS.set(ops)
    try:
        yield
    finally:
        _CURRENT_OPS.reset(token)


NHWC = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _pairs(padding, n: int):
    """nn.Conv's padding forms: "SAME"/"VALID", one int, one int per dimension, or (low, high) per dimension."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


class Conv(nn.Module):
    """A 2-D NHWC convolution: flax's `nn.Conv` (the fields the families use, the same parameter names, shapes,
    initialisers and dtype promotion, so the same variables from the same key), computed with the current
    `LayerOps`' `conv_general_dilated` and `bias_add`."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4 or len(self.kernel_size) != 2:
            raise ValueError(f"Conv takes NHWC images and a 2-D kernel, not {x.shape} and {self.kernel_size}")
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, x.shape[-1] // self.feature_group_count, self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        ops = current_layer_ops()
        y = ops.conv_general_dilated(x, kernel, strides, _pairs(self.padding, 2), lhs_dilation=(1, 1),
                                     rhs_dilation=(1, 1), dimension_numbers=NHWC,
                                     feature_group_count=self.feature_group_count, precision=self.precision)
        return y if bias is None else ops.bias_add(y, bias)


def _current_dot_general(*args, **kwargs):
    return current_layer_ops().dot_general(*args, **kwargs)


class Dense(nn.Dense):
    """flax's `nn.Dense` (every field, parameter and value the same) whose product is the current `LayerOps`'
    `dot_general` unless one is given."""

    dot_general: Callable | None = _current_dot_general


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
            mean, var = current_layer_ops().batch_moments(x.astype(jnp.float32))
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        # the two pieces that reduce over the batch are the current LayerOps' (a backend may compute them its way)
        shift = (bias - mean * mul).astype(self.dtype)
        return current_layer_ops().scale_shift(x, mul.astype(self.dtype), shift).astype(self.dtype)


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


class PixelDense(Dense):
    """A `Dense` whose input is the uint8 pixels themselves: `standardize` (the caller's one preprocessing
    function, pixels → model input) first, flattened, then the product. Its parameters are nn.Dense's, so a
    network's variables are the same whichever input it is given. It exists so that a backend can compute a
    narrow first layer without writing the batch back as float32 first (`LayerOps.pixel_dense`; XLA:CPU's is
    runtime/native.py's kernel); everywhere else it is exactly standardize + nn.Dense."""

    standardize: Callable | None = None

    @nn.compact
    def __call__(self, pixels: Array) -> Array:
        inputs = jax.eval_shape(lambda p: flatten(self.standardize(p)), pixels).shape[-1]
        kernel = self.param("kernel", self.kernel_init, (inputs, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        ops = current_layer_ops()
        if (pixels.dtype == jnp.uint8 and self.dot_general is _current_dot_general and self.dot_general_cls is None
                and self.precision is None and self.dtype in (None, jnp.float32)):
            y = ops.pixel_dense(pixels, kernel, bias, self.standardize)
            if y is not None:
                return y
        x, kernel, bias = nn.dtypes.promote_dtype(flatten(self.standardize(pixels)), kernel, bias, dtype=self.dtype)
        dot = self.dot_general_cls() if self.dot_general_cls is not None else self.dot_general or jax.lax.dot_general
        y = dot(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        return y if bias is None else y + bias
