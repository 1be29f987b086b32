"""The public face can be discovered (dir) and `init_variables` takes every kind of seed a JAX user holds."""

import jax
import numpy as np
import pytest

import jaxnets
from jaxnets.models import create_model, init_variables


def test_dir_lists_the_lazy_public_names():
    names = dir(jaxnets)
    for name in ("Predictor", "fit", "TrainConfig", "create_model", "__version__"):
        assert name in names
    assert set(jaxnets.__all__) <= set(names)


def _leaves(variables):
    return [np.asarray(x) for x in jax.tree.leaves(variables)]


def test_init_variables_int_typed_and_raw_keys_agree():
    model = create_model("lenet5", num_classes=3)
    by_int = init_variables(model, (32, 32, 1), 7)
    by_key = init_variables(model, (32, 32, 1), jax.random.key(7))
    by_raw = init_variables(model, (32, 32, 1), jax.random.PRNGKey(7))
    by_np = init_variables(model, (32, 32, 1), np.int64(7))
    for other in (by_key, by_raw, by_np):
        assert jax.tree.structure(other) == jax.tree.structure(by_int)
        for a, b in zip(_leaves(by_int), _leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)
    other_seed = init_variables(model, (32, 32, 1), jax.random.key(8))
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(by_int), _leaves(other_seed), strict=True))


def test_init_variables_refuses_a_non_seed():
    with pytest.raises(TypeError, match="seed must be"):
        init_variables(create_model("lenet5", num_classes=3), (32, 32, 1), "7")
