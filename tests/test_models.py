"""The model zoo: reference parameter counts, shapes, modes, dtypes, inits, and that gradients flow."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnets.models import create_model, get_entry, list_models


def _abstract_variables(model, size, channels=3):
    x = jnp.zeros((2, size, size, channels))
    return jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
    )


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "name,classes,size,channels,expected",
    [
        ("lenet5", 10, 32, 1, 61_706),
        ("alexnet", 1000, 224, 3, 61_100_840),
        ("vgg11", 1000, 224, 3, 132_863_336),
        ("vgg16", 1000, 224, 3, 138_357_544),
        ("vgg16_bn", 1000, 224, 3, 138_365_992),
        ("resnet18", 1000, 224, 3, 11_689_512),
        ("resnet34", 1000, 224, 3, 21_797_672),
        ("resnet50", 1000, 224, 3, 25_557_032),
    ],
)
def test_parameter_counts_match_reference_architectures(name, classes, size, channels, expected):
    variables = _abstract_variables(create_model(name, classes), size, channels)
    assert _count(variables["params"]) == expected


def _shape_cases():
    for name in list_models():
        entry = get_entry(name)
        if name == "lenet5":
            yield name, 32, 1, (1, 2, 10)
        elif entry.module.__name__ == "MLP":
            yield name, 16, 3, (1, 2, 10)
        else:
            yield name, 32, 3, (1, 10)
            yield name, 64, 1, (2,)


@pytest.mark.parametrize("name,size,channels,class_counts", list(_shape_cases()))
def test_output_shape_is_batch_by_classes(name, size, channels, class_counts):
    for classes in class_counts:
        model = create_model(name, classes)
        x = jnp.zeros((3, size, size, channels))
        variables = _abstract_variables(model, size, channels)
        out = jax.eval_shape(lambda v, x=x, model=model: model.apply(v, x, train=False), variables)
        assert out.shape == (3, classes)
        assert out.dtype == jnp.float32


def test_every_family_runs_at_its_smallest_and_a_middle_size():
    for name, size in [("alexnet", 32), ("alexnet", 100), ("vgg11", 32), ("resnet18", 32), ("resnet50", 48)]:
        model = create_model(name, 5)
        variables = _abstract_variables(model, size)
        out = jax.eval_shape(lambda v, m=model, s=size: m.apply(v, jnp.zeros((1, s, s, 3))), variables)
        assert out.shape == (1, 5), name


def test_batchnorm_statistics_update_in_train_mode_only():
    model = create_model("resnet18", 3)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3)) * 3 + 1
    variables = model.init(jax.random.key(1), x, train=False)
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updated["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    out_eval = model.apply(variables, x, train=False, mutable=["batch_stats"])[1]
    for a, b in zip(before, jax.tree.leaves(out_eval["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dropout_depends_on_rng_in_train_mode_and_is_off_in_eval():
    model = create_model("alexnet", 4)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(jax.random.key(1), x)
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)
    e1 = model.apply(variables, x, train=False)
    e2 = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(e1, e2)


@pytest.mark.parametrize("name,size,channels", [("lenet5", 32, 1), ("resnet18", 32, 3), ("mlp", 16, 3)])
def test_bfloat16_compute_matches_float32_loosely_and_keeps_float32_params(name, size, channels):
    x = jax.random.uniform(jax.random.key(0), (4, size, size, channels))
    f32 = create_model(name, 10)
    bf16 = create_model(name, 10, dtype="bfloat16")
    variables = f32.init(jax.random.key(1), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.init(jax.random.key(1), x)["params"]))
    ref = f32.apply(variables, x)
    low = bf16.apply(variables, x)
    assert low.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(ref))) + 1e-6
    assert float(jnp.max(jnp.abs(ref - low))) / scale < 0.05


@pytest.mark.parametrize("init,expected", [("small", lambda fan_in: 0.01), ("he", lambda fan_in: np.sqrt(2 / fan_in))])
def test_mlp_weight_initialisation_has_the_textbook_std(init, expected):
    model = create_model("mlp", 2, hidden_sizes=(256, 128), init=init)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    kernel = np.asarray(params["Dense_0"]["kernel"])
    fan_in = kernel.shape[0]
    assert kernel.std() == pytest.approx(expected(fan_in), rel=0.02)
    assert np.all(np.asarray(params["Dense_0"]["bias"]) == 0)


def test_mlp_takes_one_activation_per_layer():
    model = create_model("mlp", 1, hidden_sizes=(5, 4, 3), activation=["relu", "tanh", "sigmoid"])
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
    assert [params[f"Dense_{i}"]["kernel"].shape[1] for i in range(4)] == [5, 4, 3, 1]
    with pytest.raises(ValueError, match="one per layer"):
        create_model("mlp", 1, hidden_sizes=(5, 4), activation=["relu"])


def test_zero_init_residual_zeroes_the_last_bn_scale_of_each_block():
    model = create_model("resnet18", 2, zero_init_residual=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    block = params["layer1_0"]
    assert np.all(np.asarray(block["BatchNorm_1"]["scale"]) == 0)
    assert np.all(np.asarray(block["BatchNorm_0"]["scale"]) == 1)


def test_unknown_model_or_bad_option_names_the_valid_choices():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("resnet17", 10)
    with pytest.raises(ValueError, match="dropout_rate"):
        create_model("alexnet", 10, dropuot_rate=0.1)
    with pytest.raises(ValueError, match="relu"):
        create_model("mlp", 10, activation="swishy")
    with pytest.raises(ValueError, match="he"):
        create_model("mlp", 10, init="random")
    with pytest.raises(ValueError, match="bfloat16"):
        create_model("lenet5", 10, dtype="float8")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("lenet5", 0)


@pytest.mark.parametrize(
    "name,options,size,channels",
    [
        ("logistic_regression", {}, 8, 3),
        ("mlp", {"hidden_sizes": (32, 16)}, 8, 3),
        ("lenet5", {}, 32, 1),
        ("resnet18", {}, 32, 3),
    ],
)
def test_one_batch_overfits_in_fifty_adam_steps(name, options, size, channels):
    """If gradients flow through every layer, memorising 16 random examples is easy."""
    model = create_model(name, 4, **options)
    x = jax.random.normal(jax.random.key(0), (16, size, size, channels))
    y = jnp.arange(16) % 4
    variables = model.init(jax.random.key(1), x)
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(1e-2 if name != "resnet18" else 3e-3)
    opt_state = tx.init(params)

    def loss_fn(params, extra):
        logits, new_extra = model.apply({"params": params, **extra}, x, train=True, mutable=list(extra))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_extra

    @jax.jit
    def step(params, extra, opt_state):
        (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), extra, opt_state, loss

    losses = []
    for _ in range(50):
        params, extra, opt_state, loss = step(params, extra, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("shape,window,stride,padding", [
    ((2, 9, 9, 3), 3, 2, 1),  # ResNet's stem pool
    ((2, 8, 8, 3), 2, 2, 0),  # VGG's
    ((3, 13, 11, 4), 3, 2, 0),  # AlexNet's, odd sizes
    ((2, 7, 7, 2), 3, 1, 1),  # overlapping windows at stride 1
    ((1, 2, 2, 1), 3, 2, 0),  # smaller than the window: padded up to it
])
def test_max_pool_gradient_is_lax_select_and_scatter_ties_included(shape, window, stride, padding):
    # the pool's own backward (strided slices, not select-and-scatter) must give what lax's gradient gives:
    # each window's gradient to the first of its maximal inputs, in row-major order. Integers 0..3 make ties common.
    import flax.linen as nn

    from jaxnets.models.layers import max_pool

    def reference(x):
        _, h, w, _ = x.shape
        pads = ((padding, padding + max(0, window - h - 2 * padding)),
                (padding, padding + max(0, window - w - 2 * padding)))
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
        return nn.max_pool(x, (window, window), (stride, stride), padding="VALID")

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 4, shape).astype(np.float32))
    ours, ours_vjp = jax.vjp(lambda v: max_pool(v, window, stride, padding), x)
    theirs, theirs_vjp = jax.vjp(reference, x)
    g = jnp.asarray(rng.normal(size=theirs.shape).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    np.testing.assert_allclose(np.asarray(ours_vjp(g)[0]), np.asarray(theirs_vjp(g)[0]), atol=1e-6)
    if stride == window and not padding:  # windows do not overlap: exactly one input per window, never all ties
        assert int(jnp.count_nonzero(ours_vjp(g)[0])) == g.size
