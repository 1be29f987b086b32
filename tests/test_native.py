"""jaxnets' own XLA:CPU kernels (runtime/native.py): a narrow dense layer read straight from uint8 pixels, small
stride-1 convolutions (forward and gradients, at most 16 outputs: LeNet-5) and convolutions with 16·k outputs (forward,
input gradient, weight gradient: ResNet, VGG, AlexNet). They must be built and used where they can be,
compute what standardize + the product / lax's convolution computes, and give way to XLA's operations wherever they
cannot run (no compiler, switched off, exported, shapes or dtypes they do not take)."""

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import runtime
from jaxnets.data.preprocess import PreprocessSpec, standardize
from jaxnets.inference.scoring import forward
from jaxnets.models import create_model
from jaxnets.runtime import native

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU kernel")


def _reference(pixels, kernel, bias, spec):
    return standardize(pixels, spec).reshape(pixels.shape[0], -1) @ kernel + bias


def _problem(n, h, w, c, outputs, seed=0, extremes=False):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    if extremes:
        pixels[0] = 255
        pixels[-1] = 0
    kernel = rng.normal(0, 0.05, (h * w * c, outputs)).astype(np.float32)
    bias = rng.normal(0, 1, outputs).astype(np.float32)
    return jnp.asarray(pixels), jnp.asarray(kernel), jnp.asarray(bias)


def test_the_kernel_is_built_and_registered_on_a_machine_with_avx512_and_a_compiler():
    can = native._cpu_has_avx512f() and shutil.which(os.environ.get("CXX", "g++")) is not None
    assert native.available() == can
    if can:
        built = native.library_path()
        assert built.exists() and built.stat().st_mode & 0o044 == 0o044  # other users of a shared cache can load it


@pytest.mark.parametrize("outputs", native.OUTPUTS)
@pytest.mark.parametrize(("n", "h", "w", "c", "normalize"), [
    (1, 8, 8, 3, "imagenet"),     # one row; K = 192, a multiple of 16
    (9, 5, 7, 3, "half"),         # a last row block of one; K = 105 leaves a tail of 9 positions
    (33, 13, 13, 1, "none"),      # grey, K = 169
    (40, 64, 64, 3, "imagenet"),  # big enough for the second core
    (24, 48, 48, 3, "half"),      # a uniform normalisation (one scale and shift for all), on both cores
    (700, 32, 32, 3, "half"),     # one chunk of positions (O = 1) or few: their rows split between the cores
])
def test_pixel_dense_is_standardize_then_the_product(outputs, n, h, w, c, normalize):
    if not native.available():
        pytest.fail("the kernel should build on this machine (see the test above)")
    spec = PreprocessSpec(h, w, c, normalize=normalize)
    pixels, kernel, bias = _problem(n, h, w, c, outputs, extremes=True)
    affine = native.per_position_affine(functools.partial(standardize, spec=spec), pixels.shape)
    got = jax.jit(lambda p, k, b: native.pixel_dense(p, k, b, *affine))(pixels, kernel, bias)
    want = _reference(pixels, kernel, bias, spec)
    scale = float(jnp.max(jnp.abs(standardize(pixels, spec)))) * float(jnp.sum(jnp.abs(kernel), 0).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)
    assert got.shape == (n, outputs)


@pytest.mark.parametrize("outputs", native.OUTPUTS)
@pytest.mark.parametrize(("n", "h", "w", "c", "normalize"), [
    (6, 16, 16, 3, "imagenet"),   # K = 768: whole blocks of positions
    (9, 5, 7, 3, "half"),         # K = 105: a block of 16 and a tail of 9 positions
    (1, 13, 13, 1, "none"),       # one row, K = 169
    (40, 64, 64, 3, "imagenet"),  # big enough for the second core
])
def test_pixel_dense_gradients_are_those_of_the_reference(outputs, n, h, w, c, normalize):
    # the kernel's gradient is a second kernel over the same bytes; the bias's is Σ g
    spec = PreprocessSpec(h, w, c, normalize=normalize)
    pixels, kernel, bias = _problem(n, h, w, c, outputs, seed=1, extremes=True)
    affine = native.per_position_affine(functools.partial(standardize, spec=spec), pixels.shape)
    g = jnp.asarray(np.random.default_rng(2).normal(size=(n, outputs)), jnp.float32)

    def loss(fun):
        return lambda k, b: jnp.sum(fun(k, b) * g)

    got = jax.jit(jax.grad(loss(lambda k, b: native.pixel_dense(pixels, k, b, *affine)), argnums=(0, 1)))(kernel, bias)
    want = jax.grad(loss(lambda k, b: _reference(pixels, k, b, spec)), argnums=(0, 1))(kernel, bias)
    scale = float(jnp.max(jnp.abs(standardize(pixels, spec)))) * float(jnp.sum(jnp.abs(g), 0).max())
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * scale)


@pytest.mark.parametrize(("name", "num_classes", "size", "options"), [
    ("logistic_regression", 1, 24, {}),
    ("shallow_mlp", 1, 20, {}),
    ("mlp", 4, 12, {"hidden_sizes": (16, 8)}),
])
def test_an_mlp_predicts_the_same_from_pixels_through_the_kernel(name, num_classes, size, options):
    spec = PreprocessSpec(size, size, 3, normalize="imagenet")
    model = create_model(name, num_classes, **options)
    pixels = jnp.asarray(np.random.default_rng(3).integers(0, 256, (5, size, size, 3), dtype=np.uint8))
    variables = model.init(jax.random.PRNGKey(0), standardize(pixels, spec))
    # the parameters are those of the plain network, whichever input it is given
    from_pixels = model.init(jax.random.PRNGKey(0), pixels, standardize=functools.partial(standardize, spec=spec))
    assert jax.tree.structure(from_pixels) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(from_pixels), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)

    fast = runtime.jit(forward(model, spec))
    plain = jax.jit(lambda v, x: model.apply(v, standardize(x, spec), train=False))
    np.testing.assert_allclose(fast(variables, pixels), plain(variables, pixels), rtol=1e-5, atol=1e-5)
    hlo = fast.lower(variables, pixels).compile().as_text()
    first_width = model.hidden_sizes[0] if model.hidden_sizes else num_classes
    assert (native.TARGET in hlo) == (first_width in native.OUTPUTS and native.available())
    # outside jaxnets' runtime (export, other backends) the same function is plain XLA
    assert native.TARGET not in jax.jit(forward(model, spec)).lower(variables, pixels).compile().as_text()


def test_the_affine_map_is_read_off_the_standardize_function_and_anything_else_is_refused():
    spec = PreprocessSpec(4, 5, 3, normalize="imagenet")
    scale, shift = native.per_position_affine(functools.partial(standardize, spec=spec), (2, 4, 5, 3))
    pixels = np.random.default_rng(5).integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
    np.testing.assert_allclose(pixels.reshape(7, -1) * scale + shift,
                               np.asarray(standardize(pixels, spec)).reshape(7, -1), rtol=1e-6, atol=1e-6)
    assert scale.shape == shift.shape == (60,)
    gamma = lambda x: (x.astype(np.float32) / 255) ** 2.2  # noqa: E731 - not affine: XLA keeps that layer
    assert native.per_position_affine(gamma, (2, 4, 5, 3)) is None
    # affine, but not position by position: each image standardised by its own mean
    per_image = lambda x: x.astype(np.float32) - x.astype(np.float32).mean(axis=(1, 2, 3), keepdims=True)  # noqa: E731
    assert native.per_position_affine(per_image, (2, 4, 5, 3)) is None

    def raises(x):
        raise AttributeError("a function the numpy probe cannot go through")

    assert native.per_position_affine(raises, (2, 4, 5, 3)) is None


def test_outputs_the_kernel_does_not_take_stay_with_xla():
    spec = PreprocessSpec(12, 12, 3, normalize="half")
    model = create_model("logistic_regression", 10)  # 10 outputs: not a divisor of 16
    pixels = jnp.asarray(np.random.default_rng(4).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8))
    variables = model.init(jax.random.PRNGKey(0), standardize(pixels, spec))
    fast = runtime.jit(forward(model, spec))
    assert native.TARGET not in fast.lower(variables, pixels).compile().as_text()
    np.testing.assert_allclose(fast(variables, pixels), model.apply(variables, standardize(pixels, spec)),
                               rtol=1e-5, atol=1e-5)


def _lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize(("x_shape", "w_shape"), [
    ((64, 14, 14, 6), (5, 5, 6, 16)),   # LeNet-5's second layer, big enough for the second core
    ((64, 32, 32, 1), (5, 5, 1, 6)),    # its first layer: 28 outputs a row (three blocks), 6 of 16 lanes
    ((3, 7, 9, 2), (3, 2, 2, 5)),       # uneven everything
    ((1, 5, 5, 17), (5, 5, 17, 1)),     # one output; a kernel row of 85 inputs (six passes of the gradient)
    ((5, 30, 40, 3), (3, 3, 3, 16)),    # 38 outputs a row
    ((2, 4, 4, 1), (1, 1, 1, 3)),       # a 1x1 kernel
    ((2, 6, 6, 4), (6, 6, 4, 7)),       # the kernel as large as the image: one output position
    ((3, 9, 11, 16), (3, 3, 16, 16)),   # 16 channels: three chunks of the input gradient
    ((2, 3, 3, 2), (2, 2, 2, 9)),       # rows narrower than a block of the input gradient
    ((3, 40, 37, 1), (3, 4, 1, 16)),    # one channel, 16 outputs: 34 outputs a row (three 16-lane groups)
    ((4, 9, 20, 1), (7, 5, 1, 9)),      # one channel, 9 outputs: one tap of the gradient at a time
    ((2, 5, 6, 1), (2, 3, 1, 1)),       # one channel, one output, 4 outputs a row
])
def test_the_conv_kernels_compute_lax_convolution_and_its_gradients(x_shape, w_shape):
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    assert native.takes_conv(x, w) == native.available()
    if not native.available():
        pytest.skip("no kernel on this machine (no AVX-512 or no compiler): the fallback tests cover it")
    want, pullback = jax.vjp(lambda w: _lax_conv(x, w), w)
    g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    got = jax.jit(native.conv_forward)(x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    d_w = jax.jit(native.conv_weight_grad, static_argnums=2)(x, g, w.shape)
    np.testing.assert_allclose(d_w, pullback(g)[0], rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(d_w))))
    d_x, want_d_x = jax.jit(native.conv_input_grad)(g, w), jax.vjp(lambda x: _lax_conv(x, w), x)[1](g)[0]
    assert d_x.shape == x.shape
    np.testing.assert_allclose(d_x, want_d_x, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want_d_x))))


def test_the_conv_kernels_propagate_non_finite_values():
    x = jnp.ones((2, 8, 8, 3), jnp.float32).at[1, 2, 3, 0].set(jnp.nan)
    w = jnp.ones((3, 3, 3, 4), jnp.float32)
    if not native.takes_conv(x, w):
        pytest.skip("no kernel on this machine")
    y = np.asarray(jax.jit(native.conv_forward)(x, w))
    assert np.isnan(y[1, :3, 1:4]).all() and np.isfinite(y[0]).all() and np.isfinite(y[1, 3:]).all()
    d_w = jax.jit(native.conv_weight_grad, static_argnums=2)(x, jnp.ones((2, 6, 6, 4), jnp.float32), w.shape)
    assert np.isnan(np.asarray(d_w)[..., 0, :]).all() and np.isfinite(np.asarray(d_w)[..., 1:, :]).all()
    # one channel (its own kernels): the NaN reaches exactly the outputs and taps that read it
    x1, w1 = jnp.ones((2, 12, 20, 1), jnp.float32).at[1, 5, 17, 0].set(jnp.nan), jnp.ones((3, 3, 1, 6), jnp.float32)
    y1 = np.asarray(jax.jit(native.conv_forward)(x1, w1))
    assert np.isnan(y1[1, 3:6, 15:18]).all() and np.isfinite(y1[0]).all() and np.isfinite(y1).sum() == y1.size - 9 * 6
    d_w1 = jax.jit(native.conv_weight_grad, static_argnums=2)(x1, jnp.ones(y1.shape, jnp.float32), w1.shape)
    assert np.isnan(np.asarray(d_w1)).all()
    # the input gradient is scattered from real taps only: a NaN weight reaches the input values that tap meets
    # (lax, over a zero-padded gradient, makes its whole channel NaN: 0 * NaN)
    w2 = jnp.ones((3, 3, 3, 5), jnp.float32).at[2, 0, 1, 4].set(jnp.nan)  # dx: (1, 8, 9, 3)
    d_x2 = np.asarray(jax.jit(native.conv_input_grad)(jnp.ones((1, 6, 7, 5), jnp.float32), w2))
    assert np.isnan(d_x2[0, 2:8, 0:7, 1]).all() and np.isfinite(d_x2).sum() == d_x2.size - 6 * 7


def _conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize(("x_shape", "w_shape", "strides", "padding"), [
    ((4, 32, 32, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3))),   # ResNet's stem
    ((3, 12, 12, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1))),  # its first stage (runs of 192: 32 blocks)
    ((2, 9, 9, 64), (3, 3, 64, 128), (2, 2), ((1, 1), (1, 1))),   # a stride-2 downsampling layer: two tiles of 64
    ((2, 9, 9, 64), (1, 1, 64, 128), (2, 2), ((0, 0), (0, 0))),   # its 1x1 shortcut
    ((5, 10, 7, 5), (3, 4, 5, 48), (2, 1), ((0, 2), (1, 2))),     # uneven: 3 registers, uneven and high padding
    ((1, 6, 6, 2), (5, 5, 2, 80), (1, 1), ((4, 4), (4, 4))),      # padding wider than the image: all edge columns
    ((3, 5, 5, 1), (2, 2, 1, 16), (3, 3), ((0, 0), (0, 0))),      # a stride wider than the kernel
    ((9, 4, 4, 7), (4, 4, 7, 32), (1, 1), ((0, 0), (0, 0))),      # kernel = image; nine images, five slices
    ((2, 6, 7, 32), (5, 3, 32, 16), (1, 1), ((2, 1), (0, 2))),    # uneven padding, 32 channels: the input gradient
    ((2, 9, 9, 16), (3, 3, 16, 64), (1, 1), ((0, 0), (0, 0))),    # VALID: the input gradient pads by k - 1
    # dw large beside the batch: the weight gradient's tasks are regions of dw, not slices of the batch
    ((2, 4, 4, 256), (3, 3, 256, 512), (1, 1), ((1, 1), (1, 1))),  # ResNet's last stage: 24 regions
    ((3, 5, 5, 160), (3, 3, 160, 320), (2, 2), ((0, 1), (0, 1))),  # strided, TF-SAME padding
    ((1, 3, 3, 96), (3, 3, 96, 80), (1, 1), ((1, 1), (1, 1))),     # 80 outputs: a region of 64 and one of 16
    ((2, 2, 2, 1024), (1, 1, 1024, 64), (1, 1), ((0, 0), (0, 0))),  # one region cut into groups of passes
    ((4, 4, 4, 1024), (1, 1, 1024, 64), (1, 1), ((0, 0), (0, 0))),  # the same, threaded
    # the input gradient of a strided convolution: stride·stride phases, each a stride-1 convolution
    ((2, 11, 10, 16), (3, 3, 16, 32), (3, 2), ((4, 0), (1, 3))),   # padding wider than the kernel, uneven phases
    ((2, 7, 8, 32), (1, 1, 32, 16), (3, 3), ((0, 0), (0, 0))),     # phases no tap meets: zeros
    ((1, 5, 6, 16), (3, 3, 16, 16), (1, 1), ((3, 3), (2, 4))),     # stride 1, padding wider than the kernel
    ((1, 3, 3, 16), (3, 3, 16, 16), (2, 2), ((0, 0), (0, 0))),     # one output position
    ((2, 12, 12, 16), (2, 2, 16, 32), (4, 4), ((0, 0), (0, 0))),   # a stride wider than the kernel, with taps
])
def test_the_wide_kernels_compute_lax_convolution_and_its_gradients(x_shape, w_shape, strides, padding):
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    assert native.takes_wide_conv(x, w, strides, padding) == native.available()
    if not native.available():
        pytest.skip("no kernel on this machine (no AVX-512 or no compiler): the fallback tests cover it")
    want, pullback = jax.vjp(lambda x, w: _conv(x, w, strides, padding), x, w)
    got = jax.jit(native.wide_conv_forward, static_argnums=(2, 3))(x, w, strides, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    want_d_x, want_d_w = pullback(g)
    d_w = jax.jit(native.wide_conv_weight_grad, static_argnums=(2, 3, 4))(x, g, w.shape, strides, padding)
    np.testing.assert_allclose(d_w, want_d_w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want_d_w))))
    if native.takes_wide_input_grad(x, w, strides, padding):
        d_x = jax.jit(native.wide_conv_input_grad, static_argnums=(2, 3, 4))(g, w, strides, padding, x.shape[1:3])
        assert d_x.shape == x.shape
        np.testing.assert_allclose(d_x, want_d_x, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want_d_x))))


def test_the_wide_kernels_propagate_non_finite_values_and_refuse_other_layers():
    x = jnp.ones((2, 8, 8, 16), jnp.float32).at[1, 2, 3, 0].set(jnp.inf)
    w = jnp.ones((3, 3, 16, 16), jnp.float32)
    same = ((1, 1), ((1, 1), (1, 1)))
    if not native.takes_wide_conv(x, w, *same):
        pytest.skip("no kernel on this machine")
    y = np.asarray(jax.jit(native.wide_conv_forward, static_argnums=(2, 3))(x, w, *same))
    assert np.isinf(y[1, 1:4, 2:5]).all() and np.isfinite(y[0]).all() and np.isfinite(y[1, 4:]).all()
    g = jnp.ones((2, 8, 8, 16), jnp.float32).at[0, 0, 0, 5].set(jnp.nan)
    d_w = np.asarray(jax.jit(native.wide_conv_weight_grad, static_argnums=(2, 3, 4))(x, g, w.shape, *same))
    assert np.isinf(d_w[..., 0, :5]).all() and np.isnan(d_w[1:, 1:, :, 5]).all()  # x[0,0,0] meets g[0,0,0]: w[1,1]
    assert np.isfinite(d_w[:, :, 1:, :5]).all() and np.isfinite(d_w[:, :, 1:, 6:]).all()
    d_x = np.asarray(jax.jit(native.wide_conv_input_grad, static_argnums=(2, 3, 4))(g, w, *same, x.shape[1:3]))
    assert np.isnan(d_x[0, :2, :2]).all() and np.isfinite(d_x[0, 2:]).all() and np.isfinite(d_x[1]).all()
    for other in (w[..., :15], w.astype(jnp.bfloat16)):  # not 16·k outputs, not float32
        assert not native.takes_wide_conv(x, other, *same)
    assert not native.takes_wide_conv(x, w, (1, 1), ((-1, 0), (0, 0)))  # a crop
    assert not native.takes_wide_conv(jnp.ones((2, 2, 2, 16)), w, (1, 1), ((0, 0), (0, 0)))  # no output
    assert not native.takes_wide_input_grad(x[..., :15], w[:, :, :15], *same)  # not 16·k input channels


def _resnet_step(dtype=jnp.float32):
    model = create_model("resnet18", 10, dtype=dtype)
    # 4 images of 64 px: the last stage's BatchNorm sees 16 values a channel (at 2 of 32 px it sees 2, and the
    # gradients of any two summation orders differ by 20 %)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 64, 64, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.tanh(logits.astype(jnp.float32)) ** 2)

    return jax.value_and_grad(loss), variables["params"]


def test_resnet_trains_through_the_wide_kernels_with_lax_gradients():
    step, params = _resnet_step()
    fast = runtime.jit(step)
    hlo = fast.lower(params).compile().as_text()
    calls = {target: hlo.count(f'custom_call_target="{target}"')
             for target in (native.WIDE_CONV_FORWARD, native.WIDE_CONV_WEIGHT_GRAD)}
    # every one of the 20 convolutions forward and its weight gradient, and the input gradients of all but the
    # stem: 13 stride-1 3x3 layers, 3 stride-2 3x3 layers (4 phases each), 3 stride-2 1x1 shortcuts (1 phase each)
    assert calls == ({native.WIDE_CONV_FORWARD: 48, native.WIDE_CONV_WEIGHT_GRAD: 20} if native.available() else
                     {native.WIDE_CONV_FORWARD: 0, native.WIDE_CONV_WEIGHT_GRAD: 0})
    for got, want in zip(jax.tree.leaves(fast(params)), jax.tree.leaves(jax.jit(step)(params)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    bf16_step, bf16_params = _resnet_step(jnp.bfloat16)
    bf16_hlo = runtime.jit(bf16_step).lower(bf16_params).compile().as_text()
    assert native.WIDE_CONV_WEIGHT_GRAD not in bf16_hlo and native.WIDE_CONV_FORWARD not in bf16_hlo


def _lenet_step(dtype=jnp.float32):
    model = create_model("lenet5", 10, dtype=dtype)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(8, 32, 32, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    loss = lambda v: jnp.sum(jnp.tanh(model.apply(v, x).astype(jnp.float32)) ** 2)  # noqa: E731
    return jax.value_and_grad(loss), variables


def test_lenet_trains_through_the_conv_kernels_with_lax_gradients():
    step, variables = _lenet_step()
    fast = runtime.jit(step)
    hlo = fast.lower(variables).compile().as_text()
    for target in (native.CONV_FORWARD, native.CONV_WEIGHT_GRAD, native.CONV_INPUT_GRAD):
        assert (target in hlo) == native.available()
    assert hlo.count(native.CONV_INPUT_GRAD) == (1 if native.available() else 0)  # the first layer's: none
    assert hlo.count(native.CONV_WEIGHT_GRAD) == (2 if native.available() else 0)  # both layers' kernels
    for got, want in zip(jax.tree.leaves(fast(variables)), jax.tree.leaves(jax.jit(step)(variables)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_bfloat16_convolutions_stay_with_xla():
    step, variables = _lenet_step(jnp.bfloat16)
    hlo = runtime.jit(step).lower(variables).compile().as_text()
    assert not any(t in hlo for t in (native.CONV_FORWARD, native.CONV_WEIGHT_GRAD, native.CONV_INPUT_GRAD))


@pytest.mark.parametrize(("name", "options", "augment"), [
    ("shallow_mlp", {}, "none"),            # one output: the kernels, forward and weight gradient
    ("mlp", {"hidden_sizes": (16,)}, "none"),  # 16 outputs
    ("shallow_mlp", {}, "flip"),            # augmented: the step standardises the augmented images itself
])
def test_a_train_step_reads_the_pixels_through_the_kernels_and_learns_the_same(name, options, augment):
    from jaxnets.data.augment import get_augment
    from jaxnets.train import OptimConfig, StepConfig, create_state, make_optimizer
    from jaxnets.train.steps import make_train_step, reads_pixels, train_step_fn

    spec = PreprocessSpec(24, 24, 3, normalize="imagenet")
    # plain SGD: Adam's first step is ±lr wherever a gradient is nonzero, which turns float rounding into lr
    tx, _ = make_optimizer(OptimConfig(optimizer="sgd", lr=0.5), 5, 2)
    model, state = create_state(name, 2, options, spec.shape, tx, 0)
    cfg = StepConfig(spec, 2, True, augment=get_augment(augment))
    rng = np.random.default_rng(6)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)),
             "label": jnp.asarray(rng.integers(0, 2, 40), jnp.int32), "mask": jnp.ones(40, bool).at[-3:].set(False)}
    assert reads_pixels(model, cfg) == (augment == "none")
    fast = make_train_step(model, tx, cfg)
    hlo = fast.lower(state, batch).compile().as_text()
    assert (native.PIXEL_WEIGHT_GRAD in hlo) == (augment == "none" and native.available())
    # the reference: the same network as a model that does not take pixels, so the step feeds it the normalised
    # images as before (normalize(to_unit(...)) + nn.Dense, XLA's gradient, outside the runtime)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init
              and f.name not in ("parent", "name")}
    images_model = type("ImagesOnly", (type(model),), {"takes_pixels": False})(**fields)
    assert not reads_pixels(images_model, cfg)
    want_state, want_sums = jax.jit(train_step_fn(images_model, tx, cfg))(state, batch)
    got_state, got_sums = fast(state, batch)
    for got, want in zip(jax.tree.leaves((got_state.params, got_sums)), jax.tree.leaves((want_state.params,
                                                                                           want_sums)), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


_FALLBACK = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxnets import runtime
from jaxnets.data.preprocess import PreprocessSpec, standardize
from jaxnets.inference.scoring import forward
from jaxnets.models import create_model
from jaxnets.runtime import native
spec = PreprocessSpec(16, 16, 3, normalize="half")
model = create_model("logistic_regression", 1)
pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
variables = model.init(jax.random.PRNGKey(0), standardize(pixels, spec))
fast = runtime.jit(forward(model, spec))
same = np.allclose(fast(variables, pixels), model.apply(variables, standardize(pixels, spec)), atol=1e-5)
lenet = create_model("lenet5", 10)
digits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 1)), jnp.float32)
lenet_vars = lenet.init(jax.random.PRNGKey(0), digits)
step = jax.grad(lambda v: jnp.sum(lenet.apply(v, digits) ** 2))
fast_step = runtime.jit(step)
same = same and all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(
    jax.tree.leaves(fast_step(lenet_vars)), jax.tree.leaves(jax.jit(step)(lenet_vars))))
hlo = fast.lower(variables, pixels).compile().as_text() + fast_step.lower(lenet_vars).compile().as_text()
used = any(t in hlo for t in (native.TARGET, native.CONV_FORWARD, native.CONV_WEIGHT_GRAD, native.CONV_INPUT_GRAD,
                             native.WIDE_CONV_WEIGHT_GRAD))
print(json.dumps({"available": native.available(), "used": used, "same": bool(same)}))
"""


@pytest.mark.parametrize("setting", ["switched off", "no compiler"])
def test_without_the_kernel_the_same_predictions_come_from_xla(setting, tmp_path):
    import json

    env = {**os.environ, "JAXNETS_CACHE": str(tmp_path / "cache")}
    if setting == "switched off":
        env[native.ENV] = "xla"
    else:
        env["CXX"] = str(tmp_path / "no-such-compiler")
    done = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"available": False, "used": False, "same": True}
    if setting == "no compiler" and native._cpu_has_avx512f():
        assert "not available" in done.stderr and "no C++ compiler" in done.stderr
        # the build says so in one line: what, where, and that it failed
        building = [line for line in done.stderr.splitlines() if line.startswith("jaxnets: building")]
        assert len(building) == 1 and str(tmp_path / "cache") in building[0] and "failed after" in building[0]
    assert not list(Path(tmp_path / "cache").glob("native/*.so"))  # nothing half-built left behind


def test_the_first_build_prints_one_line_saying_what_where_and_how_long(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "true")  # a "compiler" that succeeds at once (and writes nothing): only the message
    target = native.library_path()
    native._build_saying_so(target)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "CPU kernels" in lines[0] and str(target) in lines[0], lines
    assert re.search(r"done in \d+\.\d s$", lines[0]), lines


def test_the_kernels_can_be_built_ahead_of_time_and_say_why_not_where_they_cannot_run(monkeypatch, capsys):
    monkeypatch.setenv(native.ENV, "xla")
    assert native.main([]) == 1 and "do not run here" in capsys.readouterr().out
    monkeypatch.delenv(native.ENV)
    assert native.main([]) == (0 if native.available() else 1)
    monkeypatch.setattr(native.sys, "platform", "darwin")  # macOS (and ARM): XLA's operations, said so
    assert native.why_not() is not None and not native._cpu_has_avx512f()


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    target = native.library_path()
    with pytest.raises(RuntimeError, match="failed"):
        native.build(target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_the_bench_suite_pairs_each_round_with_its_own_peer_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_suite", Path(__file__).parents[1] / "tools" / "bench_suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    ours = [{"images_per_s": v, "compile_s": c} for v, c in ((100.0, 5.0), (200.0, 0.1), (300.0, 0.1))]
    row = suite.summary(ours, [None, {"images_per_s": 100.0}, {"images_per_s": 300.0}])
    assert row["ratios"] == [2.0, 1.0]  # the failed first peer round drops out, the others stay paired
    assert row["images_per_s"] == 200.0 and row["torch_images_per_s"] == 100.0 and row["ratio"] == 2.0
    assert row["compile_s"] == 5.0  # the first round's compilation, not a cache load
