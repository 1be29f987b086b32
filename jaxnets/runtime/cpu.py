"""XLA:CPU's versions of jaxnets' layer functions, and the compiler options of its jitted steps.

Nothing here changes what a model computes: each function has the values of its plain counterpart
(models/layers.py's `LayerOps` defaults: lax's and jnp's), to float rounding, and is tested against them
(tests/test_runtime.py, tests/test_native.py, tests/test_depthwise_kernel.py). `layer_ops()` is the table
`runtime.jit` traces jaxnets' steps with on XLA:CPU; every path has a name in choice.py and can be switched off
there, per CPU kind or by `JAXNETS_CPU_OFF`. What each path is for, in short (the measurements
behind each: docs/bench/history.md, "The CPU runtime's own notes"; today's figures: BENCHMARKS.md):

- `ynn_dots`: every dot of our steps, and the dots XLA's convolutions become, go to the YNNPACK library
  (`compiler_options`, per `jax.jit`, never the process-wide XLA_FLAGS).
- `one_channel_conv`: a stride-1 VALID convolution of a one-channel image (LeNet-5's first layer) as a sum of
  shifted slices when it is not differentiated (predict); in a train step, and for its weight gradient, jaxnets'
  kernel where it runs. Off on AMD (choice.OFF_ON): there `few_channel_conv` runs the kernel for it, faster.
- `few_channel_conv`: with 2-16 input channels (1 too where `one_channel_conv` is off), the input gradient is
  one matmul and a col2im sum of shifted windows instead of XLA:CPU's transposed convolution (jaxnets' kernels,
  forward and gradients, where they run).
- `stored_input_conv`: with >= 64 input channels (or where the wide kernels take the layer), lax's gradient of the
  stored input, not of the fusion XLA would otherwise re-derive inside its channel-major transpose; jaxnets' wide
  kernels compute the forward and either gradient where they run (native.py).
- `narrow_dense`: few outputs from many inputs (a narrow head; logistic regression and the shallow net where the
  pixel-dense kernel does not run): the kernel's gradient as gᵀ·x from a stored buffer, transposed.
- `pixel_dense_kernel`: `PixelDense` straight from uint8 pixels by jaxnets' kernel (native.py).
- `depthwise_kernel`: the kernel gradient of models/depthwise.py's convolution (EfficientNet-Lite) by jaxnets'
  kernel (native.py), through `LayerOps.depthwise_weight_grad`.
- `batch_norm_sums`, `conv_bias_sums`: reductions.py.

Reverse mode works through every path; forward mode (`jax.jvp`) does not (custom VJPs), and where jaxnets' kernels
run neither reverse over reverse nor `vmap` works (an FFI call has no such rules). Nothing in jaxnets uses either
under `runtime.jit`; explanations and exports use plain `jax.jit`, hence plain lax.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..models import layers
from . import choice, native
from .reductions import batch_moments, bias_add, materialized, scale_shift

YNN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
ENV = "JAXNETS_CPU_DOTS"
_NHWC = layers.NHWC


def _on(name: str) -> bool:
    """Whether the path `name` runs here: choice.py's switches, its kind's table where jaxnets' kernels run."""
    return choice.enabled(name, kernels_run=native.available())


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib knows the options (they are experimental: a newer or older one may not)."""
    try:
        jax.jit(lambda a: a @ a, compiler_options=dict(options)).lower(jnp.ones((2, 2))).compile()
        return True
    except Exception:  # an unknown option or enum value is an XLA error
        return False


def compiler_options() -> dict[str, Any] | None:
    """The options for our jitted CPU steps, or None for XLA's defaults."""
    choice_ = os.environ.get(ENV, "ynn").lower()
    if choice_ not in ("ynn", "xla"):
        raise ValueError(f"{ENV} must be 'ynn' or 'xla', got {choice_!r}")
    if not _on("ynn_dots"):
        return None
    return dict(YNN_DOTS) if _accepted(tuple(YNN_DOTS.items())) else None


@jax.custom_vjp
def _shifted_slices_conv(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    kh, kw = rhs.shape[:2]
    h, w = lhs.shape[1] - kh + 1, lhs.shape[2] - kw + 1
    image, kernel = lhs[..., 0].astype(jnp.float32), rhs[:, :, 0, :].astype(jnp.float32)
    out = sum(image[:, dy:dy + h, dx:dx + w, None] * kernel[dy, dx] for dy in range(kh) for dx in range(kw))
    return out.astype(lhs.dtype)


def _lax_valid_conv(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", dimension_numbers=_NHWC)


def _shifted_slices_fwd(lhs, rhs):
    # under differentiation (a train step) jaxnets' small-convolution kernel where it runs: in the whole LeNet-5
    # train step the shifted slices' forward cost 13 % of the step against it; predicting, they gained 32 % until
    # the kernel's one-channel forward (-4 % since: off on AMD; tools/kernel_table.py, BENCHMARKS.md)
    out = native.conv_forward(lhs, rhs) if native.takes_conv(lhs, rhs) else _shifted_slices_conv(lhs, rhs)
    return out.astype(lhs.dtype), (lhs, rhs)


def _shifted_slices_bwd(residuals, g):
    # XLA's own input gradient is fast for this shape (and unused for a first layer: dead code); the weight
    # gradient, a 28×28-window convolution on XLA:CPU, is jaxnets' kernel where it runs
    lhs, rhs = residuals
    d_lhs, d_rhs = jax.vjp(_lax_valid_conv, lhs, rhs)[1](g)
    return d_lhs, _weight_grad(lhs, rhs, g, d_rhs)


def _weight_grad(lhs: jax.Array, rhs: jax.Array, g: jax.Array, lax_grad: jax.Array | None = None) -> jax.Array:
    """The kernel's gradient of a stride-1 VALID convolution: jaxnets' kernel (`native.conv_weight_grad`) where it
    runs, else lax's (`lax_grad` when the caller has it already)."""
    if native.takes_conv(lhs, rhs):
        return native.conv_weight_grad(lhs, g, rhs.shape).astype(rhs.dtype)
    if lax_grad is not None:
        return lax_grad
    return jax.vjp(lambda r: _lax_valid_conv(lhs, r), rhs)[1](g)[0]


_shifted_slices_conv.defvjp(_shifted_slices_fwd, _shifted_slices_bwd)


def _small_conv_forward(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """jaxnets' kernel (`native.conv_forward`, at most 16 outputs) where it runs, else lax's convolution."""
    return native.conv_forward(lhs, rhs) if native.takes_conv(lhs, rhs) else _lax_valid_conv(lhs, rhs)


@jax.custom_vjp
def _few_channel_conv(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return _small_conv_forward(lhs, rhs)


def _few_channel_fwd(lhs, rhs):
    return _small_conv_forward(lhs, rhs), (lhs, rhs)


def _few_channel_bwd(residuals, g):
    lhs, rhs = residuals
    if native.takes_conv(lhs, rhs):  # jaxnets' kernel: the contraction over the outputs along its lanes
        return native.conv_input_grad(g, rhs).astype(lhs.dtype), _weight_grad(lhs, rhs, g)
    return _col2im_input_grad(rhs, g).astype(lhs.dtype), _weight_grad(lhs, rhs, g)


def _col2im_input_grad(rhs: jax.Array, g: jax.Array) -> jax.Array:
    """The input's gradient as one matmul that spreads each output's gradient over its window, then the windows
    added back in place (col2im), instead of XLA:CPU's slow transposed convolution for few channels."""
    kh, kw, c, o = rhs.shape
    n, h, w, _ = g.shape
    # in float32 whatever the compute dtype, as lax accumulates: bfloat16 sums of the windows lost 4× accuracy.
    # Window-major [kh, kw, c, N, h, w]: each window's slab is read in one contiguous stream by the col2im sum
    # (position-major [N, h, w, kh·kw·c] would read 25 rows apart per output)
    spread = jnp.matmul(rhs.reshape(kh * kw * c, o).astype(g.dtype), g.reshape(-1, o).T,
                        preferred_element_type=jnp.float32).reshape(kh, kw, c, n, h, w)
    return sum(jnp.pad(spread[i, j], ((0, 0), (0, 0), (i, kh - 1 - i), (j, kw - 1 - j)))
               for i in range(kh) for j in range(kw)).transpose(1, 2, 3, 0)


_few_channel_conv.defvjp(_few_channel_fwd, _few_channel_bwd)
FEW_CHANNELS = 16  # at most this many input channels: the input gradient goes through `_few_channel_bwd`


def _wide_conv(lhs, rhs, strides, padding):
    """jaxnets' kernel (item 10) where it runs, else lax's convolution."""
    if native.takes_wide_conv(lhs, rhs, strides, padding):
        return native.wide_conv_forward(lhs, rhs, strides, padding).astype(lhs.dtype)
    return jax.lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _stored_input_conv(lhs, rhs, strides, padding):
    return _wide_conv(lhs, rhs, strides, padding)


def _stored_input_fwd(lhs, rhs, strides, padding):
    return _wide_conv(lhs, rhs, strides, padding), (lhs, rhs)


def _stored_input_bwd(strides, padding, residuals, g):
    # lax's own gradient, but of the stored input: the weight gradient's convolution wants it channel-major,
    # and XLA otherwise re-derives it inside that transpose (BatchNorm, ReLU, the residual add, read across the
    # grain); jaxnets' kernels compute either gradient from NHWC as it lies where they run (lax's is then dead code)
    lhs, rhs = residuals
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=strides, padding=padding,
                             dimension_numbers=_NHWC)
    d_lhs, d_rhs = jax.vjp(conv, materialized(lhs), rhs)[1](g)
    if native.takes_wide_input_grad(lhs, rhs, strides, padding):
        d_lhs = native.wide_conv_input_grad(g, rhs, strides, padding, lhs.shape[1:3]).astype(lhs.dtype)
    if native.takes_wide_conv(lhs, rhs, strides, padding):
        d_rhs = native.wide_conv_weight_grad(lhs, g, rhs.shape, strides, padding).astype(rhs.dtype)
    return d_lhs, d_rhs


_stored_input_conv.defvjp(_stored_input_fwd, _stored_input_bwd)
WIDE_CHANNELS = 64  # from this many input channels, the weight gradient reads the stored input


@jax.custom_vjp
def _narrow_dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return x @ kernel


def _narrow_dense_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _narrow_dense_bwd(residuals, g):
    x, kernel = residuals
    rows, g_rows = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    # the [outputs, inputs] product first, from a buffer XLA cannot fold back into an in-place transposed dot
    d_kernel = materialized(jnp.matmul(g_rows.T, rows, preferred_element_type=jnp.float32)).T
    return (g @ kernel.T).astype(x.dtype), d_kernel.astype(kernel.dtype)


_narrow_dense.defvjp(_narrow_dense_fwd, _narrow_dense_bwd)
NARROW_OUTPUTS, NARROW_INPUTS = 10, 512  # the dense layers `_narrow_dense` takes (measured crossovers)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` as nn.Dense calls it, except a narrow layer (see the module docstring)."""
    (contract_l, contract_r), batch = dimension_numbers
    if (rhs.ndim == 2 and tuple(contract_l) == (lhs.ndim - 1,) and tuple(contract_r) == (0,) and batch == ((), ())
            and precision is None and preferred_element_type is None and lhs.dtype == rhs.dtype
            and rhs.shape[1] <= NARROW_OUTPUTS and rhs.shape[0] >= NARROW_INPUTS):
        return _narrow_dense(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, except a stride-1 VALID convolution of an NHWC image with one channel (computed
    as shifted slices) or a few (its input gradient computed as matmul + col2im), and one with ≥ 64 input channels
    or 16·k outputs (its weight gradient from the stored input; jaxnets' wide kernels, forward and gradients,
    where they run): see the module docstring. jaxnets' small-convolution kernels run inside the one- and
    few-channel paths; the wide kernels wherever they take a layer."""
    ones, on = (None, (1, 1), [1, 1]), _on
    plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1)
             and (padding == "VALID" or all(tuple(p) == (0, 0) for p in padding))
             and lhs_dilation in ones and rhs_dilation in ones and feature_group_count == 1
             and precision is None and not kwargs and dimension_numbers == _NHWC)
    if plain and lhs.shape[-1] == 1 and on("one_channel_conv"):
        return _shifted_slices_conv(lhs, rhs)
    if plain and lhs.shape[-1] <= FEW_CHANNELS and on("few_channel_conv"):
        return _few_channel_conv(lhs, rhs)
    if (lhs.ndim == 4 and dimension_numbers == _NHWC and lhs_dilation in ones and rhs_dilation in ones
            and feature_group_count == 1 and precision is None and not kwargs):
        strides = tuple(int(s) for s in window_strides)
        pads = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding) \
            if isinstance(padding, str) else padding
        pads = tuple((int(a), int(b)) for a, b in pads)
        if (lhs.shape[-1] >= WIDE_CHANNELS and on("stored_input_conv")) or native.takes_wide_conv(
                lhs, rhs, strides, pads):
            return _stored_input_conv(lhs, rhs, strides, pads)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)


def pixel_dense(pixels: jax.Array, kernel: jax.Array, bias: jax.Array | None, standardize: Callable):
    """`LayerOps.pixel_dense`: jaxnets' kernel where it takes the layer (uint8 pixels, float32 weights, an affine
    standardize, 1/2/4/8/16 outputs), else None (then `PixelDense` is standardize + the product)."""
    if not _on("pixel_dense_kernel") or not native.takes(pixels, kernel):
        return None
    if bias is None:
        bias = jnp.zeros(kernel.shape[1], jnp.float32)
    affine = native.per_position_affine(standardize, pixels.shape) if bias.dtype == jnp.float32 else None
    return None if affine is None else native.pixel_dense(pixels, kernel, bias, *affine)


def depthwise_weight_grad(x: jax.Array, g: jax.Array, k: int, stride: int, pads: tuple):
    """`LayerOps.depthwise_weight_grad`: jaxnets' kernel where it takes the layer (float32, 3×3 or 5×5), else None
    (then models/depthwise.py reduces tap by tap)."""
    if not native.takes_depthwise_weight_grad(x, g, k, stride, pads):
        return None
    return native.depthwise_weight_grad(x, g, k, stride, pads)


def layer_ops() -> layers.LayerOps:
    """The `LayerOps` of XLA:CPU: each path of the module docstring that `choice` leaves on, the plain function
    for the others."""
    plain, on = layers.PLAIN_OPS, _on
    return layers.LayerOps(
        conv_general_dilated=conv_general_dilated,
        dot_general=dot_general if on("narrow_dense") else plain.dot_general,
        bias_add=bias_add if on("conv_bias_sums") else plain.bias_add,
        batch_moments=batch_moments if on("batch_norm_sums") else plain.batch_moments,
        scale_shift=scale_shift if on("batch_norm_sums") else plain.scale_shift,
        pixel_dense=pixel_dense,
        depthwise_weight_grad=depthwise_weight_grad)


def with_cpu_kernels(fun: Callable) -> Callable:
    """`fun`, traced with jaxnets' layers computing with `layer_ops()` (what `runtime.jit` compiles on XLA:CPU)."""
    ops = layer_ops()

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with layers.use_layer_ops(ops):
            return fun(*args, **kwargs)

    return traced
