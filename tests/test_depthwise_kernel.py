"""jaxnets' depthwise kernel gradient (runtime/kernels/depthwise.cc): the kernel's gradient of models/depthwise.py's
convolution, the one piece of EfficientNet-Lite's step XLA:CPU ran at under 1 G multiply-adds/s. It must compute
lax's grouped-convolution gradient for every shape it takes, carry non-finite values to exactly the taps that meet
them, be what a Lite train step runs inside runtime.jit, and give way to XLA's reductions where it cannot run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import runtime
from jaxnets.models import create_model
from jaxnets.models.depthwise import depthwise_conv
from jaxnets.runtime import cpu, native

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU kernel")


def _lax_conv(x, kernel, stride, pads):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, feature_group_count=x.shape[-1],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _lax_grads(x, kernel, stride, pads, g):
    """lax's grouped convolution of x and its (input, kernel) gradients for the output cotangent g."""
    y, pullback = jax.vjp(lambda x, w: _lax_conv(x, w, stride, pads), x, kernel)
    return y, *pullback(g)


@pytest.mark.parametrize(("x_shape", "k", "stride", "pads"), [
    ((2, 7, 9, 16), 3, 1, ((1, 1), (1, 1))),      # one block of 16 channels, symmetric padding
    ((3, 8, 8, 20), 5, 2, ((1, 2), (1, 2))),      # TF "SAME" at stride 2 (the extra row and column after); 16 + 4
    ((1, 5, 6, 88), 5, 1, ((2, 2), (2, 2))),      # Lite2's 88 channels: 5 blocks, the last one half full
    ((4, 11, 10, 33), 3, 2, ((0, 1), (0, 1))),    # no low padding, an odd width
    ((2, 3, 3, 7), 5, 1, ((2, 2), (2, 2))),       # an image smaller than the filter: every column an edge
    ((2, 12, 12, 48), 3, 1, ((0, 0), (0, 0))),    # VALID
    ((1, 1, 1, 5), 3, 1, ((1, 1), (1, 1))),       # one pixel
    ((9, 6, 6, 240), 5, 1, ((2, 2), (2, 2))),     # 15 blocks, nine images: more slices than one
    ((2, 9, 9, 32), 3, 3, ((1, 1), (1, 1))),      # a stride as wide as the filter
    ((3, 7, 8, 1), 3, 4, ((4, 3), (4, 5))),       # one channel (one lane), stride and padding wider than the filter
    ((16, 12, 12, 64), 5, 1, ((2, 2), (2, 2))),   # 3.7 M multiply-adds: both cores work
])
def test_the_kernel_gradient_is_laxs(x_shape, k, stride, pads):
    rng = np.random.default_rng(sum(x_shape) + k + stride)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, x_shape[-1])), jnp.float32)
    g = jnp.asarray(rng.normal(size=_lax_conv(x, kernel, stride, pads).shape), jnp.float32)
    want = _lax_grads(x, kernel, stride, pads, g)[2]
    assert native.takes_depthwise_weight_grad(x, g, k, stride, pads) == native.available()
    if not native.available():
        pytest.skip("no kernel on this machine (no AVX-512 or no compiler): the fallback test covers it")
    got = jax.jit(native.depthwise_weight_grad, static_argnums=(2, 3, 4))(x, g, k, stride, pads)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_non_finite_values_reach_exactly_the_taps_that_meet_them_and_other_layers_are_refused():
    x = jnp.ones((2, 6, 6, 20), jnp.float32).at[1, 0, 0, 3].set(jnp.inf)  # the top-left pixel of image 1
    g = jnp.ones((2, 6, 6, 20), jnp.float32).at[0, 5, 5, 17].set(jnp.nan)  # the bottom-right output of image 0
    same = (3, 1, ((1, 1), (1, 1)))
    if not native.takes_depthwise_weight_grad(x, g, *same):
        pytest.skip("no kernel on this machine")
    d_w = np.asarray(jax.jit(native.depthwise_weight_grad, static_argnums=(2, 3, 4))(x, g, *same))
    # x[0, 0] is read by the taps (dy, dx) <= (1, 1) only (tap 2 of a row reaches it from output -1); a non-finite
    # g reaches every tap of its channel, padding included (0·NaN), as in lax
    assert np.isinf(d_w[:2, :2, 0, 3]).all() and np.isfinite(d_w[2, :, 0, 3]).all()
    assert np.isfinite(d_w[:, 2, 0, 3]).all() and np.isnan(d_w[..., 0, 17]).all()
    want = _lax_grads(x, jnp.ones((3, 3, 1, 20)), 1, same[2], g)[2]
    np.testing.assert_array_equal(np.isfinite(d_w), np.isfinite(np.asarray(want)))
    assert np.isfinite(np.delete(d_w, [3, 17], axis=3)).all()
    for other in ((x.astype(jnp.bfloat16), g, *same), (x, g, 7, 1, ((3, 3), (3, 3))),  # bfloat16, a 7x7 filter
                  (x, g[..., :19], *same), (x, g, 3, 1, ((-1, 1), (1, 1)))):  # channels differ, a crop
        assert not native.takes_depthwise_weight_grad(*other)


def _lite_step(train: bool):
    model = create_model("efficientnet_lite0", 5)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 48, 48, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        out = model.apply({**variables, "params": params}, x, train=train,
                          **({"mutable": ["batch_stats"], "rngs": {"dropout": jax.random.PRNGKey(1)}} if train else {}))
        logits = out[0] if train else out
        return jnp.sum(jnp.tanh(logits) ** 2)

    return jax.value_and_grad(loss), variables["params"]


def test_a_lite_step_takes_every_depthwise_gradient_through_the_kernel_and_learns_the_same():
    step, params = _lite_step(train=False)
    if not native.available():
        pytest.skip("no kernel on this machine")
    calls = str(jax.make_jaxpr(cpu.with_cpu_kernels(step))(params)).count("jaxnets_depthwise_weight_grad")
    assert calls == 16  # Lite0's sixteen depthwise layers
    assert "jaxnets_depthwise_weight_grad" not in str(jax.make_jaxpr(step)(params))  # plain jit: XLA's reductions
    fast, plain = runtime.jit(step)(params), jax.jit(step)(params)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(plain), strict=True):
        if "depthwise" in jax.tree_util.keystr(path):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want))) + 1e-7)


def test_switched_off_the_gradient_comes_from_xlas_reductions(monkeypatch):
    monkeypatch.setenv("JAXNETS_CPU_OFF", "depthwise_kernel")
    x = jnp.ones((2, 5, 5, 16), jnp.float32)
    assert not native.takes_depthwise_weight_grad(x, x, 3, 1, ((1, 1), (1, 1)))
    step, params = _lite_step(train=False)
    assert "jaxnets_depthwise_weight_grad" not in str(jax.make_jaxpr(cpu.with_cpu_kernels(step))(params))
    grads = runtime.jit(step)(params)[1]
    plain = jax.jit(step)(params)[1]
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want))) + 1e-7)


def test_the_depthwise_layer_through_the_kernel_has_laxs_values_and_gradients():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(3, 10, 10, 24)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(5, 5, 1, 24)), jnp.float32)
    pads = ((1, 2), (1, 2))
    probe = jnp.asarray(rng.normal(size=(3, 5, 5, 24)), jnp.float32)
    loss = lambda x, w: (depthwise_conv(x, w, 2, pads) * probe).sum()  # noqa: E731
    traced = str(jax.make_jaxpr(cpu.with_cpu_kernels(jax.grad(loss, argnums=(0, 1))))(x, kernel))
    assert ("jaxnets_depthwise_weight_grad" in traced) == native.available()
    got_y = runtime.jit(lambda x, w: depthwise_conv(x, w, 2, pads))(x, kernel)
    got_x, got_w = runtime.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    want_y, want_x, want_w = _lax_grads(x, kernel, 2, pads, probe)
    for got, want in ((got_y, want_y), (got_x, want_x), (got_w, want_w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))
