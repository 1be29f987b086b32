"""The per-step XLA options: chosen per model, accepted by this jaxlib, switchable off, same results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import compile_options
from jaxnets.models import create_model


def test_cpu_steps_use_ynnpack_dots_except_for_a_single_matrix_vector_model(monkeypatch):
    monkeypatch.delenv(compile_options.ENV, raising=False)
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for XLA:CPU")
    assert compile_options.compiler_options(create_model("resnet18", 2)) == compile_options.YNN_DOTS
    assert compile_options.compiler_options(create_model("mlp", 2)) == compile_options.YNN_DOTS
    assert compile_options.compiler_options(create_model("logistic_regression", 1)) is None


def test_the_environment_switch_turns_them_off_and_rejects_typos(monkeypatch):
    monkeypatch.setenv(compile_options.ENV, "xla")
    assert compile_options.compiler_options(create_model("lenet5", 10)) is None
    monkeypatch.setenv(compile_options.ENV, "fast")
    with pytest.raises(ValueError, match="ynn"):
        compile_options.compiler_options(create_model("lenet5", 10))


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
        monkeypatch.setenv(compile_options.ENV, choice)
        results[choice] = compile_options.jit(jax.value_and_grad(loss), model)(variables["params"])
    for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results["ynn"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(a))) + 1e-7)
