"""The backend module: CPU speed options chosen by the platform, accepted by this jaxlib, switchable off,
and never changing what a model computes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import runtime
from jaxnets.models import create_model
from jaxnets.runtime import cpu

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are for XLA:CPU")


def test_cpu_steps_use_ynnpack_dots_and_the_environment_switch_turns_them_off(monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)
    assert cpu.compiler_options() == cpu.YNN_DOTS
    monkeypatch.setenv(cpu.ENV, "xla")
    assert cpu.compiler_options() is None
    monkeypatch.setenv(cpu.ENV, "fast")
    with pytest.raises(ValueError, match="ynn"):
        cpu.compiler_options()


def test_a_convnet_gives_the_same_logits_and_gradients_with_and_without_the_options(monkeypatch):
    # eval mode (train-mode BatchNorm on a tiny batch would amplify any rounding); AlexNet at 32 px is
    # small enough to stay quick and has both convolutions and dense layers
    model = create_model("alexnet", 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        return jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x, train=False)))

    results = {}
    for choice in ("xla", "ynn"):
        monkeypatch.setenv(cpu.ENV, choice)
        results[choice] = runtime.jit(jax.value_and_grad(loss))(variables["params"])
    for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results["ynn"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(a))) + 1e-7)


def _convs(fun, *args) -> int:
    return str(jax.make_jaxpr(fun)(*args)).count("conv_general_dilated")


def test_lenet_is_plain_flax_and_its_one_channel_conv_runs_as_shifted_slices_only_inside_runtime_steps():
    model = create_model("lenet5", 10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    plain = lambda v, x: model.apply(v, x)  # noqa: E731
    assert _convs(plain, variables, x) == 2  # the model itself: two lax convolutions
    assert _convs(cpu.with_narrow_convs(plain), variables, x) == 1  # conv1 became shifted slices
    np.testing.assert_allclose(runtime.jit(plain)(variables, x), jax.jit(plain)(variables, x), rtol=1e-5, atol=1e-5)

    def grads(wrap):
        loss = lambda v, x: jnp.sum(jnp.tanh(model.apply(v, x)) ** 2)  # noqa: E731
        return jax.jit(wrap(jax.grad(loss, argnums=(0, 1))))(variables, x)

    for got, want in zip(jax.tree.leaves(grads(cpu.with_narrow_convs)), jax.tree.leaves(grads(lambda f: f)),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((2, 12, 12, 17), (3, 3, 17, 4), (1, 1), "VALID"),  # between the few-channel and the wide paths
    ((2, 12, 12, 1), (3, 3, 1, 4), (2, 2), "VALID"),   # strided
    ((2, 12, 12, 1), (3, 3, 1, 4), (1, 1), "SAME"),    # padded
])
def test_other_convolutions_stay_lax_bit_for_bit(shape, kernel, strides, padding):
    conv = nn.Conv(kernel[-1], kernel[:2], strides=strides, padding=padding)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    apply = lambda v, x: conv.apply(v, x)  # noqa: E731
    assert _convs(cpu.with_narrow_convs(apply), variables, x) == 1
    np.testing.assert_array_equal(cpu.with_narrow_convs(apply)(variables, x), apply(variables, x))


@pytest.mark.parametrize("shape, kernel", [((3, 14, 14, 6), (5, 5, 6, 16)), ((2, 9, 7, 3), (3, 2, 3, 5))])
def test_a_few_channel_convolution_has_lax_values_and_gradients(shape, kernel):
    # LeNet-5's second layer (6 → 16, 5×5) and an uneven one: the input gradient is computed as matmul + col2im
    conv = nn.Conv(kernel[-1], kernel[:2], padding="VALID")
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, x: jnp.sum(jnp.sin(conv.apply(v, x)))  # noqa: E731
    fast = jax.jit(cpu.with_narrow_convs(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    assert "custom_vjp" in str(jax.make_jaxpr(cpu.with_narrow_convs(loss))(variables, x))
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_a_few_channel_input_gradient_in_bfloat16_is_as_accurate_as_lax():
    # the windows are summed in float32, as lax accumulates: summed in bfloat16 the error was 4× lax's
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 14, 14, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 6, 16)) / 10, jnp.float32)
    g = jnp.asarray(rng.normal(size=(8, 10, 10, 16)), jnp.float32)

    def input_gradient(conv, dtype):
        return jax.vjp(lambda x: conv(x, w.astype(dtype)), x.astype(dtype))[1](g.astype(dtype))[0]

    exact = input_gradient(cpu._lax_valid_conv, jnp.float32)
    scale = float(jnp.max(jnp.abs(exact)))
    ours = float(jnp.max(jnp.abs(input_gradient(cpu._few_channel_conv, jnp.bfloat16) - exact))) / scale
    lax = float(jnp.max(jnp.abs(input_gradient(cpu._lax_valid_conv, jnp.bfloat16) - exact))) / scale
    assert ours <= 1.5 * lax + 1e-4


@pytest.mark.parametrize("strides, padding", [((1, 1), [(1, 1), (1, 1)]), ((2, 2), "SAME"), ((2, 2), "VALID")])
def test_a_wide_convolution_has_lax_values_and_gradients_from_its_stored_input(strides, padding):
    # ResNet's and VGG's convolutions (≥ 64 input channels): lax's own gradient, read from the stored input
    conv = nn.Conv(8, (3, 3), strides=strides, padding=padding)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 9, 9, cpu.WIDE_CHANNELS)), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, x: jnp.sum(jnp.sin(conv.apply(v, jax.nn.relu(x) * 2)))  # noqa: E731
    fast = jax.jit(cpu.with_narrow_convs(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    gradient = jax.make_jaxpr(cpu.with_narrow_convs(jax.grad(loss)))(variables, x)
    assert "custom_vjp" in str(gradient) and "cond[" in str(gradient)  # the weight gradient reads the stored input
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_the_stored_input_is_the_input_even_when_it_is_not_finite():
    x = jnp.asarray([[np.nan, 1.0], [np.inf, -np.inf]])
    for value in (x, x[::-1], jnp.zeros(3)):
        np.testing.assert_array_equal(jax.jit(cpu._materialized)(value), value)
