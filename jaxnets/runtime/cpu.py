"""XLA:CPU speed options for jaxnets' own jitted steps; nothing here changes what a model computes.

1. YNNPACK dots. XLA:CPU can hand each dot (and the dots its convolution rewrites produce, forward and
   backward) to the YNNPACK library instead of its own emitted loops. Measured on the developers' 2-core
   machines (BENCHMARKS.md, "What was tried"): a 3×3 64→64 convolution's forward+backward on 32×32 maps
   184 ms → 43 ms, ResNet-18 training 1.6–2× faster; logistic regression's matrix-vector product, once
   left on XLA's code, runs the same either way (Zen 5: 520k vs 527k images/s predict), so every step gets
   them. They go to `jax.jit(..., compiler_options=...)` of our steps only, never to the process-wide
   XLA_FLAGS. `JAXNETS_CPU_DOTS=xla` turns them off.
2. Narrow convolutions. XLA:CPU runs a stride-1 VALID convolution of a one-channel image (LeNet-5's first
   layer) at ~5 GFLOP/s. `with_cpu_kernels` (which applies every item below) computes exactly that case as a
   sum of shifted slices (6× faster forward on a batch of 64 digits, the same function to float rounding,
   lax's own backward), by intercepting `nn.Conv` while a step is traced: the model and its parameters stay
   plain Flax.
   With 2–16 input channels (LeNet-5's second layer) the input gradient —
   a transposed convolution XLA:CPU runs at a few GFLOP/s for a 6-channel output (0.90 ms of a 2.7 ms step)
   — is one matmul and a col2im sum of shifted windows (0.41 ms), the same values to float rounding.
   Where jaxnets' own kernels run (item 9) they compute the forward, the input gradient (2–16 channels) and
   the weight gradients (1–16 channels) instead.
3. Wide convolutions (≥ 64 input channels: ResNet, VGG, AlexNet). lax's own gradient, except that the weight
   gradient reads the input the forward pass stored: XLA:CPU otherwise recomputes BatchNorm + ReLU (+ the
   residual add) inside the channel-major transpose that convolution needs, reading across the grain. ResNet-18's
   transposes 100 → 55 ms per step at 128 px, the step −6 %, AlexNet −4 %, VGG-16 unchanged (interleaved A/B).
4. Narrow dense layers (a few outputs from many inputs: logistic regression, the shallow net's first layer).
   XLA:CPU computes the kernel's gradient xᵀ·g as a product that contracts the batch axis of x in place, 0.70 ms
   for the shallow net's [32, 49152] → 4 layer; gᵀ·x, which reads x along its rows, takes 0.10 ms, and the
   small [4, 49152] result transposed from a stored buffer 0.03 ms more (the shallow net's train step 1.16 →
   ~0.6 ms). With more outputs XLA's own product is the faster one (at 32 outputs 0.23 ms against 1.1 ms), so
   only layers of at most NARROW_OUTPUTS outputs and at least NARROW_INPUTS inputs take this path.
5. Freed memory kept. XLA:CPU allocates a step's temporary buffers with malloc and frees them when the step
   ends; glibc hands blocks of more than a few MB back to the kernel at once (munmap, or trimming the heap),
   so the next step page-faults and zeroes them again: 125 page faults per call of the shallow net's
   gradient, a third of its time in the kernel (perf); ResNet-18's step at 128 px is one 272 MB buffer, 66,800
   faults and 0.08–0.24 s of system time per step. XLA allocates that buffer on its worker threads, and a
   thread's own glibc arena maps anything above 64 MB afresh whatever the thresholds, so (mallopt,
   process-wide, only through `runtime.tune_process()`, see host.py): `share_one_arena` makes
   every thread that has no arena yet use the main heap, and keeps up to 64 MB free at its top and blocks up
   to 32 MB in it (without that the heap is trimmed and grown again around every step: LeNet-5's predict step
   took 30 faults and ran 5–10 % slower); once a train step is built (`runtime.training_process`),
   `keep_freed_memory` lets the main heap serve blocks of any size and never trims it, so a step's buffers are
   reused: ResNet-18's faults per step 66,800 → 0; `fit` hands the free memory back when it returns
   (`release_freed_memory`). A process that only predicts still hands blocks above 32 MB back, a process on an
   accelerator keeps glibc's defaults, and `JAXNETS_CPU_MALLOC=system` leaves every glibc default.
6. BatchNorm's reductions (ResNet, VGG-BN). XLA:CPU sums a [32, 64, 64, 64] activation over (N, H, W) at 2–3
   GB/s when the summand is a fusion (13 ms; its gradients' Σg and Σg·x re-derive a max pool's backward inside
   the reduction: 42 ms each for ResNet's stem), ~87 ms of ResNet-18's 128-px step in all. `layers.BatchNorm`
   leaves its two pieces with reductions, `batch_moments` and `scale_shift`, as methods; here they are custom
   VJPs whose sums go over the batch axis first into a stored [H·W·C] row, then over the positions
   (`channel_sum`), with the cotangent read from a buffer: the reductions 87 → 14 ms, the step 453 → 370 ms
   (interleaved A/B, Zen 5); 967 → 914 ms on a Zen 4 (batch 32, 128 px, median of 6). The statistics are the
   module's own (two passes, float32), to float rounding.
7. Convolution biases (AlexNet, VGG, LeNet). The bias gradient is the same slow reduction over (N, H, W) of a
   fused ReLU and max-pool backward: 96 ms of AlexNet's 504 ms step at 128 px for its first layer alone. A
   plain `nn.Conv` with a bias runs here without it, and `bias_add` adds it with a `channel_sum` gradient
   (AlexNet's step 564–646 → 494–529 ms, two interleaved A/B rounds on Zen 4).
8. A narrow first layer read from pixels (logistic regression, the shallow net: `layers.PixelDense`, which
   `scoring.forward` uses for every prediction). XLA:CPU converts the uint8 batch to float32 in a pass of its
   own and then runs a library product that cannot fuse it: 72 µs of logistic regression's 77 µs predict step
   at 64 px against the peer's 30–43 µs from float32. jaxnets' own kernel (`native.py`, built on first use)
   converts 16 pixels at a time in a register, reads the batch once as bytes and splits the rows between the
   two cores: that layer 72 → 24 µs, the shallow net's [32, 49152] → 4 layer ~400 → 137 µs (Zen 4). Layers of
   1, 2, 4, 8 or 16 outputs in float32; anything else, or no kernel, is standardize + nn.Dense as before.
9. Small convolutions (LeNet-5). XLA:CPU runs a stride-1 VALID convolution with 16 outputs at ~60 GFLOP/s
   forward and computes its weight gradient as a convolution over a 28×28 "window" after transposing both
   operands channel-major (~25 GFLOP/s). With at most 16 output channels one AVX-512 register holds all the
   outputs of a position, and jaxnets' kernels (`native.py`, `kernels/small_conv.cc`) run the forward and the
   weight gradient as streams of broadcast-multiply-adds over the NHWC data as it lies, and the input gradient
   with the contraction over the outputs along the lanes: LeNet-5's second layer forward 0.53 → 0.17 ms, its
   weight gradient 0.52 → 0.16 ms, its input gradient (item 2's matmul + col2im) 0.62 → 0.48 ms, the first
   layer's weight gradient 1.29 → 0.21 ms (batch 64, Zen 4). float32 only; bfloat16, or no kernel, is lax's
   (and item 2's) as before.
10. Convolutions with 16·k outputs (ResNet, VGG, AlexNet). XLA:CPU computes a convolution's kernel gradient
   as another convolution, over an output-sized "window", after transposing the input channel-major and the
   gradient position-major: 34 ms (72 GFLOP/s) for ResNet-18's stem at batch 32, 128 px, 19 ms for each 3×3
   64→64 layer, 4.4 ms for a 1×1/2 shortcut; it runs the 3-channel stem's forward at ~80 GFLOP/s and the other
   layers at 170-200. jaxnets' kernels (`native.py`, `kernels/wide_conv.cc`) read NHWC as it lies and keep a
   block of outputs in 24 AVX-512 registers: the weight gradients 12, 12 and 0.9 ms, the stem's forward 30 →
   12 ms, every other forward and a stride-1 layer's input gradient (the forward kernel over the gradient, the
   kernel turned by 180°) 5-30 % faster (~200-230 GFLOP/s, Zen 4; BENCHMARKS.md): ResNet-18's train step
   770 → 600-630 ms, AlexNet's 395 → 315 ms. float32, no negative padding; the weight gradient only up to 128
   input and output channels (at 256 XLA's own is faster: 12.5 against 15.5 ms). The stem and VGG's first
   layer, below item 3's 64 channels, take item 3's path for these.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import native

YNN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
ENV = "JAXNETS_CPU_DOTS"
_NHWC = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


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
    choice = os.environ.get(ENV, "ynn").lower()
    if choice not in ("ynn", "xla"):
        raise ValueError(f"{ENV} must be 'ynn' or 'xla', got {choice!r}")
    if choice == "xla":
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
    return _shifted_slices_conv(lhs, rhs), (lhs, rhs)


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
    added back in place (col2im): XLA:CPU's transposed convolution runs a 6-channel output at a few GFLOP/s."""
    kh, kw, c, o = rhs.shape
    n, h, w, _ = g.shape
    # in float32 whatever the compute dtype, as lax accumulates: bfloat16 sums of the windows lost 4× accuracy.
    # Window-major [kh, kw, c, N, h, w]: each window's slab is read in one contiguous stream by the col2im sum
    # (position-major [N, h, w, kh·kw·c] read 25 rows 600 bytes apart per output: 7.3 → 4.2–5.1 ms at batch 256)
    spread = jnp.matmul(rhs.reshape(kh * kw * c, o).astype(g.dtype), g.reshape(-1, o).T,
                        preferred_element_type=jnp.float32).reshape(kh, kw, c, n, h, w)
    return sum(jnp.pad(spread[i, j], ((0, 0), (0, 0), (i, kh - 1 - i), (j, kw - 1 - j)))
               for i in range(kh) for j in range(kw)).transpose(1, 2, 3, 0)


_few_channel_conv.defvjp(_few_channel_fwd, _few_channel_bwd)
FEW_CHANNELS = 16  # at most this many input channels: the input gradient goes through `_few_channel_bwd`


def _materialized(x: jax.Array) -> jax.Array:
    """`x` itself, through a conditional XLA cannot see through: its operand has to be a buffer, so the consumer
    reads the stored values instead of a copy of the fusion that made them (both branches return `x`: v * 1
    is v for every float, NaN and infinities included)."""
    return jax.lax.cond(jnp.isfinite(x.reshape(-1)[0]), lambda v: v, lambda v: v * 1, x)


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
    # grain: 22 ms for one [32,32,32,64] activation of ResNet-18, 2 ms from the stored buffer); jaxnets' kernels
    # compute either gradient from NHWC as it lies where they run (item 10; lax's is then dead code)
    lhs, rhs = residuals
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=strides, padding=padding,
                             dimension_numbers=_NHWC)
    d_lhs, d_rhs = jax.vjp(conv, _materialized(lhs), rhs)[1](g)
    if native.takes_wide_input_grad(lhs, rhs, strides, padding):
        d_lhs = native.wide_conv_input_grad(g, rhs, padding).astype(lhs.dtype)
    if native.takes_wide_weight_grad(lhs, rhs, strides, padding):
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
    d_kernel = _materialized(jnp.matmul(g_rows.T, rows, preferred_element_type=jnp.float32)).T
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
    where they run): see the module docstring, items 2, 3, 9 and 10."""
    ones = (None, (1, 1), [1, 1])
    plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1)
             and (padding == "VALID" or all(tuple(p) == (0, 0) for p in padding))
             and lhs_dilation in ones and rhs_dilation in ones and feature_group_count == 1
             and precision is None and not kwargs and dimension_numbers == _NHWC)
    if plain and lhs.shape[-1] == 1:
        return _shifted_slices_conv(lhs, rhs)
    if plain and lhs.shape[-1] <= FEW_CHANNELS:
        return _few_channel_conv(lhs, rhs)
    if (lhs.ndim == 4 and dimension_numbers == _NHWC and lhs_dilation in ones and rhs_dilation in ones
            and feature_group_count == 1 and precision is None and not kwargs):
        strides = tuple(int(s) for s in window_strides)
        pads = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding) \
            if isinstance(padding, str) else padding
        pads = tuple((int(a), int(b)) for a, b in pads)
        if lhs.shape[-1] >= WIDE_CHANNELS or native.takes_wide_conv(lhs, rhs, strides, pads):
            return _stored_input_conv(lhs, rhs, strides, pads)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)


def _cpu_interceptor(next_fun, args, kwargs, context):
    """Run a plain `nn.Conv` through `conv_general_dilated` above, a plain `nn.Dense` through `dot_general`,
    with the same parameters, and jaxnets' own BatchNorm's two reducing methods through the custom VJPs below
    (a subclass, which may override them, keeps its own)."""
    from ..models.layers import BatchNorm, PixelDense  # models never import runtime: no cycle

    module = context.module
    if module.is_initializing() or (context.method_name != "__call__" and context.method_name
                                    not in _BATCH_NORM_PIECES):
        return next_fun(*args, **kwargs)
    if context.method_name in _BATCH_NORM_PIECES:
        if type(module) is not BatchNorm:
            return next_fun(*args, **kwargs)
        return _BATCH_NORM_PIECES[context.method_name](*args, **kwargs)
    if type(module) is nn.Conv and module.conv_general_dilated is None and module.conv_general_dilated_cls is None:
        params = module.variables["params"]
        # the bias added below, its gradient a `channel_sum` — when nn.Conv's own promotion would give the bias
        # the output's dtype anyway (kernel and bias of one dtype, Flax's promote_dtype)
        if (module.use_bias and module.mask is None and params["bias"].dtype == params["kernel"].dtype
                and module.promote_dtype is nn.dtypes.promote_dtype):
            fast = module.clone(parent=None, conv_general_dilated=conv_general_dilated, use_bias=False)
            y = fast.apply({"params": {"kernel": params["kernel"]}}, *args, **kwargs)
            return bias_add(y, params["bias"].astype(y.dtype))
        fast = module.clone(parent=None, conv_general_dilated=conv_general_dilated)
    elif type(module) is PixelDense:
        return _pixel_dense(module, next_fun, *args, **kwargs)
    elif type(module) is nn.Dense and module.dot_general is None and module.dot_general_cls is None:
        params = module.variables["params"]
        fast = module.clone(parent=None, dot_general=dot_general)
    else:
        return next_fun(*args, **kwargs)
    return fast.apply({"params": params}, *args, **kwargs)


def _pixel_dense(module, next_fun, pixels, *args, **kwargs):
    """A `PixelDense` (uint8 pixels → standardize → product) by jaxnets' own kernel where it takes the layer."""
    if pixels.dtype != jnp.uint8:  # Flax intercepts PixelDense's own super().__call__ with the float input too
        return next_fun(pixels, *args, **kwargs)
    params = module.variables["params"]
    plain = (module.dot_general is None and module.dot_general_cls is None and module.precision is None
             and module.dtype in (None, jnp.float32) and not args and not kwargs)
    affine = native.per_position_affine(module.standardize, pixels.shape) if plain else None
    bias = params["bias"] if module.use_bias else jnp.zeros(params["kernel"].shape[1], jnp.float32)
    if affine is None or not native.takes(pixels, params["kernel"]) or bias.dtype != jnp.float32:
        if args or kwargs:
            return next_fun(pixels, *args, **kwargs)
        # standardize, then the very same layer as a plain nn.Dense, which this interceptor then takes (the narrow
        # path's gradient: a train step that reads pixels loses nothing where the kernel does not run)
        from ..models.layers import flatten

        fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(nn.Dense)
                  if f.init and f.name not in ("parent", "name")}
        return nn.Dense(**fields, parent=None).apply({"params": params}, flatten(module.standardize(pixels)))
    return native.pixel_dense(pixels, params["kernel"], bias, *affine)


def with_cpu_kernels(fun: Callable) -> Callable:
    """`fun`, traced with every plain `nn.Conv` going through `conv_general_dilated` above (the one-channel,
    few-channel and wide paths of the module docstring) and its bias through `bias_add`, every plain `nn.Dense`
    through `dot_general` (the narrow path) and jaxnets' BatchNorm's reductions through
    `batch_moments`/`scale_shift`. Their gradients are
    custom VJPs: reverse mode works, forward mode (`jax.jvp`) through them does not (a BatchNorm in training mode
    included, and any convolution these paths take), and where jaxnets' kernels run (native.py: a pixel first
    layer, float32 convolutions with at most 16 or with 16·k outputs) neither reverse over reverse nor `vmap`
    works, as an FFI call has no derivative or batching rule of its own — nothing in jaxnets uses either under
    these steps (the explanations and exports use plain `jax.jit`)."""

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with nn.intercept_methods(_cpu_interceptor):
            return fun(*args, **kwargs)

    return traced


def channel_sum(v: jax.Array) -> jax.Array:
    """Σ over every axis but the last, in float32: the batch axis first (whole rows, read along the grain), then
    the positions of the [H·W, C] remainder. XLA:CPU reduces the same [32, 64, 64, 64] activation directly
    over (N, H, W) at ~2–3 GB/s when the summand is a fusion (a gradient times an input: 13 ms); this way 2 ms."""
    v = v.astype(jnp.float32)
    if v.ndim < 3:
        return jnp.sum(v, axis=0) if v.ndim == 2 else v
    # the first stage stored: left to itself XLA merges the two back into the slow reduction over (N, H, W)
    rows = _materialized(v.reshape(v.shape[0], -1).sum(0))
    return rows.reshape(-1, v.shape[-1]).sum(0)


@jax.custom_vjp
def batch_moments(x32: jax.Array) -> tuple[jax.Array, jax.Array]:
    """BatchNorm's per-channel mean and biased variance (two passes, as `layers.BatchNorm.batch_moments`)."""
    n = x32.size // x32.shape[-1]
    mean = channel_sum(x32) / n
    return mean, channel_sum(jnp.square(x32 - mean)) / n


def _batch_moments_fwd(x32):
    mean, var = batch_moments(x32)
    return (mean, var), (x32, mean)


def _batch_moments_bwd(residuals, cotangents):
    # d mean/dx = 1/n; d var/dx = 2 (x − mean)/n (the mean's own term sums to zero): no reduction at all
    x32, mean = residuals
    d_mean, d_var = cotangents
    return ((d_mean + 2 * d_var * (x32 - mean)) / (x32.size // x32.shape[-1]),)


batch_moments.defvjp(_batch_moments_fwd, _batch_moments_bwd)


@jax.custom_vjp
def scale_shift(x: jax.Array, mul: jax.Array, shift: jax.Array) -> jax.Array:
    """x · mul + shift per channel (BatchNorm's output), whose gradients for mul and shift are `channel_sum`s."""
    return x * mul + shift


def _scale_shift_fwd(x, mul, shift):
    return scale_shift(x, mul, shift), (x, mul, shift)  # shift only for its dtype: a per-channel vector


def _scale_shift_bwd(residuals, g):
    x, mul, shift = residuals
    g = _materialized(g)  # read from a buffer by all three, not re-derived (a max pool's backward) inside each
    d_x = (g * mul).astype(x.dtype)
    d_mul = channel_sum(g.astype(jnp.float32) * x.astype(jnp.float32))  # float32 products, whatever the dtype
    return d_x, d_mul.astype(mul.dtype), channel_sum(g).astype(shift.dtype)


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


@jax.custom_vjp
def bias_add(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias over the last axis (a convolution's bias), whose gradient for the bias is a `channel_sum`: XLA
    sums a ReLU and max pool's backward over (N, H, W) at a few GB/s (AlexNet's first layer: 96 of a 504 ms
    step)."""
    return y + bias


def _bias_add_fwd(y, bias):
    return y + bias, bias  # the bias only for its dtype: a per-channel vector


def _bias_add_bwd(bias, g):
    return g, channel_sum(_materialized(g)).astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


_BATCH_NORM_PIECES = {"batch_moments": batch_moments, "scale_shift": scale_shift}  # jaxnets.models.layers.BatchNorm's
