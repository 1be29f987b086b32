"""The NNX door (issue #34, point 6): a jaxnets model through `jaxnets.to_nnx` gives the Linen model's outputs for
the same variables (inference, and training with BatchNorm's statistics updated), `from_nnx` gives the variables
back, and the fine-tuning example of docs/nnx.md runs as written and lowers the loss."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnets
from jaxnets.models import init_variables

pytestmark = pytest.mark.core  # flax and optax only: the bridge is checked against the newest flax too

DOC = Path(__file__).resolve().parents[1] / "docs" / "nnx.md"
CASES = {"lenet5": (32, 32, 1), "resnet18": (32, 32, 3)}


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _images(shape, n=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_nnx_outputs_equal_the_linen_models(name):
    shape = CASES[name]
    model = jaxnets.create_model(name, num_classes=3)
    variables = init_variables(model, shape, 0)
    x = _images(shape)
    net = jaxnets.to_nnx(model, variables)
    _close(net(x, train=False), model.apply(variables, x, train=False))

    linen_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _close(net(x, train=True, mutable=["batch_stats"]), linen_out)
    back = jaxnets.from_nnx(net)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    jax.tree.map(_close, back["params"], variables["params"])  # a forward pass changes no weight
    if name == "resnet18":  # BatchNorm: the running statistics moved exactly as Linen's did
        assert set(back) == {"params", "batch_stats"}
        jax.tree.map(_close, back["batch_stats"], updates["batch_stats"])
        assert not np.allclose(back["batch_stats"]["bn1"]["mean"], variables["batch_stats"]["bn1"]["mean"])
        _close(net(x, train=False), model.apply(back, x, train=False))
    else:
        assert set(back) == {"params"} and not updates


def test_nnx_filters_see_params_and_batch_stats():
    model = jaxnets.create_model("resnet18", num_classes=3)
    variables = init_variables(model, CASES["resnet18"], 0)
    net = jaxnets.to_nnx(model, variables)
    params = jax.tree.leaves(nnx.state(net, nnx.Param))
    stats = jax.tree.leaves(nnx.state(net, nnx.BatchStat))
    assert len(params) == len(jax.tree.leaves(variables["params"]))
    assert len(stats) == len(jax.tree.leaves(variables["batch_stats"]))
    _close(net.conv1["kernel"], variables["params"]["conv1"]["kernel"])


def test_to_nnx_refuses_variables_without_params():
    model = jaxnets.create_model("lenet5", num_classes=3)
    with pytest.raises(ValueError, match="params"):
        jaxnets.to_nnx(model, {"batch_stats": {}})


def _documented_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return next(b for b in blocks if "nnx.Optimizer" in b)


def test_the_documented_fine_tune_runs_and_lowers_the_loss():
    scope: dict = {}
    exec(compile(_documented_example(), str(DOC), "exec"), scope)  # the example exactly as the page shows it
    net, optimizer, train_step = scope["net"], scope["optimizer"], scope["train_step"]
    before = jaxnets.from_nnx(net)
    images, labels = _images((32, 32, 3), n=8, seed=2), jnp.arange(8) % 10
    losses = [float(train_step(net, optimizer, images, labels)) for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    after = jaxnets.from_nnx(net)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), before, after))
    assert all(moved), "every weight and every BatchNorm statistic trains"
    model = scope["model"]
    _close(net(images, train=False), model.apply(after, images, train=False))


def test_the_face_exports_the_door_lazily():
    assert {"to_nnx", "from_nnx"} <= set(dir(jaxnets)) and "to_nnx" in jaxnets.__all__
