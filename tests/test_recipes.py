"""Accuracy by default (#17): MixUp/CutMix targets, TrivialAugmentWide and random erasing on device, the weights'
moving average, gradient accumulation, class weights, the learning-rate range test and the per-model recipes."""

from __future__ import annotations

import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnets.data.erase import random_erase
from jaxnets.data.mix import MixSpec, mix_batch, partners, soft_targets
from jaxnets.data.preprocess import PreprocessSpec
from jaxnets.data.trivial import trivial_augment
from jaxnets.train import StepConfig, create_state, make_train_step
from jaxnets.train.steps import ema_decay


def _constant_rows(values, mask):
    """Images whose every pixel of row i is values[i]: the mix of two rows shows its weight in every pixel."""
    images = jnp.broadcast_to(jnp.asarray(values, jnp.float32)[:, None, None, None], (len(values), 8, 8, 1))
    return images, jnp.asarray(mask)


def test_partners_pair_real_rows_only():
    mask = jnp.asarray([True, True, False, True, False])
    assert partners(mask).tolist() == [1, 3, 2, 0, 4]  # 0→1→3→0 cyclically; padded rows stay themselves


@pytest.mark.parametrize("binary", [False, True])
def test_mixup_mixes_targets_with_the_weight_of_the_pixels(binary):
    images, mask = _constant_rows([0.0, 1.0, 0.25, 0.5], [True, True, True, False])
    labels = jnp.asarray([0, 1, 2, 1]) if not binary else jnp.asarray([0, 1, 1, 0])
    targets = soft_targets(labels, 3, binary)
    mixed, new, lam = mix_batch(images, targets, mask, jax.random.key(3), MixSpec(mixup=0.4))
    lam = float(lam)
    assert 0 < lam < 1
    other = [1, 2, 0, 3]
    expected_pixels = [lam * v + (1 - lam) * [0.0, 1.0, 0.25, 0.5][o] for v, o in zip([0.0, 1.0, 0.25], other,
                                                                                          strict=False)]
    np.testing.assert_allclose(np.asarray(mixed[:3, 0, 0, 0]), expected_pixels, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new[:3]), np.asarray(lam * targets[:3] + (1 - lam) * targets[
        jnp.asarray(other[:3])]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mixed[3]), np.asarray(images[3]))  # the padded row is left alone
    np.testing.assert_array_equal(np.asarray(new[3]), np.asarray(targets[3]))


@pytest.mark.parametrize("binary", [False, True])
def test_cutmix_targets_are_the_share_of_pixels_each_image_keeps(binary):
    images, mask = _constant_rows([1.0, 2.0, 3.0], [True, True, True])
    labels = jnp.asarray([0, 1, 2]) if not binary else jnp.asarray([0, 1, 1])
    targets = soft_targets(labels, 3, binary)
    for seed in range(5):
        mixed, new, lam = mix_batch(images, targets, mask, jax.random.key(seed), MixSpec(cutmix=1.0))
        kept = np.asarray(mixed[:, :, :, 0]) == np.asarray([1.0, 2.0, 3.0])[:, None, None]
        share = kept.mean(axis=(1, 2))
        np.testing.assert_allclose(share, float(lam), atol=1e-6)  # lam is exactly the area kept
        other = jnp.asarray([1, 2, 0])
        np.testing.assert_allclose(np.asarray(new), np.asarray(lam * targets + (1 - lam) * targets[other]),
                                   atol=1e-6)


def test_trivial_augment_keeps_images_valid_and_changes_most_of_them():
    x = jax.random.uniform(jax.random.key(0), (64, 16, 16, 3))
    y = np.asarray(trivial_augment(x, jax.random.key(1)))
    assert y.shape == x.shape and np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    changed = np.abs(y - np.asarray(x)).max(axis=(1, 2, 3)) > 1e-3
    assert 0.6 < changed.mean() < 1.0  # identity and zero-magnitude draws leave some as they were


def test_random_erasing_puts_one_noise_rectangle_in_each_real_image():
    x = jnp.zeros((6, 32, 32, 3))
    mask = jnp.asarray([True] * 5 + [False])
    y = np.asarray(random_erase(x, mask, jax.random.key(0), 1.0))
    for img in y[:5]:
        rows, cols = np.nonzero(np.abs(img).max(axis=-1) > 0)
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert len(rows) == area and 0.02 * 1024 - 40 <= area <= 1024 / 3 + 40
    assert not y[5].any()
    noise = y[:5][y[:5] != 0]  # standard normal pixels, not the same rectangle of noise pasted in every image
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.15 and len(noise) > 1000
    big = np.asarray(random_erase(jnp.zeros((64, 32, 32, 3)), jnp.ones(64, bool), jax.random.key(1), 1.0))
    firsts = [tuple(img[np.abs(img).max(axis=-1) > 0][0]) for img in big]
    assert len(set(firsts)) >= 56  # (two windows may meet at the same point of the shared field)


def _tiny_state(tx, ema: bool = False):
    return create_state("mlp", 3, {"hidden_sizes": (8,)}, (4, 4, 1), tx, 0, ema=ema)


def _batch(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, 3, n), jnp.int32), "mask": jnp.ones(n, bool)}


SPEC = PreprocessSpec(4, 4, 1, normalize="half")


def test_the_weight_average_equals_its_closed_form():
    tx = optax.sgd(0.1)
    model, state = _tiny_state(tx, ema=True)
    decay = 0.9
    step = make_train_step(model, tx, StepConfig(SPEC, 3, False, ema=decay))
    average = jax.tree.map(np.asarray, state.params)
    for t in range(4):
        state, _ = step(state, _batch(8, t))
        d = float(ema_decay(decay, jnp.asarray(t)))
        assert d == pytest.approx(min(decay, (1 + t) / (10 + t)))
        average = jax.tree.map(lambda a, p, d=d: d * a + (1 - d) * np.asarray(p), average, state.params)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(e), a, rtol=1e-5, atol=1e-7), average,
                 state.ema["params"])
    assert state.eval_variables["params"] is state.ema["params"]


def test_accumulating_k_micro_batches_equals_one_big_batch():
    big = _batch(8, 0)
    plain = optax.sgd(0.5)
    model, one = _tiny_state(plain)
    one, _ = make_train_step(model, plain, StepConfig(SPEC, 3, False))(one, big)
    accumulate = optax.MultiSteps(optax.sgd(0.5), every_k_schedule=4)
    _, many = _tiny_state(accumulate)
    step = make_train_step(model, accumulate, StepConfig(SPEC, 3, False))
    for i in range(4):
        many, _ = step(many, {k: v[2 * i:2 * i + 2] for k, v in big.items()})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), one.params,
                 many.params)
    _, fresh = _tiny_state(plain)
    assert not np.allclose(np.asarray(one.params["Dense_0"]["kernel"]), np.asarray(fresh.params["Dense_0"]["kernel"]))


def test_class_weights_multiply_each_examples_loss():
    tx = optax.sgd(0.0)
    model, state = _tiny_state(tx)
    batch = _batch(8, 1)
    weights = (0.5, 2.0, 3.0)
    x = (np.asarray(batch["image"], np.float32) / 255 - 0.5) / 0.5
    logits = np.asarray(model.apply({"params": state.params}, x), np.float64)  # before the step donates the state
    _, sums = make_train_step(model, tx, StepConfig(SPEC, 3, False, class_weights=weights))(state, batch)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    labels = np.asarray(batch["label"])
    expected = sum(weights[y] * -log_p[i, y] for i, y in enumerate(labels))
    assert float(sums["loss_sum"]) == pytest.approx(expected, rel=1e-5)


def test_auto_class_weights_are_inverse_frequencies_and_imbalance_is_warned(caplog):
    from jaxnets.data.sources import from_arrays
    from jaxnets.train.config import TrainConfig
    from jaxnets.train.loop import _class_weights

    ds = from_arrays(np.zeros((10, 4, 4), np.uint8), [0] * 8 + [1] * 2, ["common", "rare"])
    weights = _class_weights(TrainConfig(class_weights="auto"), ds, ["common", "rare"])
    assert weights == pytest.approx((10 / (2 * 8), 10 / (2 * 2)))
    with caplog.at_level(logging.WARNING, logger="jaxnets.train"):
        assert _class_weights(TrainConfig(), ds, ["common", "rare"]) is None
    assert "imbalanced" in caplog.text and "--class-weights auto" in caplog.text


def test_lr_find_suggests_where_the_loss_falls_fastest(tmp_path):
    from jaxnets.train.config import TrainConfig
    from jaxnets.train.lrfind import lr_find

    result = lr_find(TrainConfig.recommended("lenet5", data="digits", quiet=True), steps=100)
    log_lr = np.log(result.lrs)
    slope = np.gradient(result.smoothed, log_lr)
    lowest = int(np.argmin(result.smoothed))
    assert 10 <= result.index < lowest  # after the first settling steps, before the minimum
    assert slope[result.index] <= 0.7 * slope[10:lowest + 1].min()  # among the steepest descents
    assert result.smoothed[lowest] < result.smoothed[0] - 0.1  # the loss really fell on this real run
    plot = tmp_path / "lr.png"
    cmd = [sys.executable, "-m", "jaxnets", "lr-find", "--model", "logistic_regression", "--data", "digits",
           "--steps", "30", "--plot", str(plot)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "suggested lr" in done.stdout and plot.stat().st_size > 1000
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "does not overwrite" in again.stderr


def test_a_weight_average_is_what_is_evaluated_and_served(tmp_path):
    from jaxnets.checkpoint import Checkpoints
    from jaxnets.inference import Predictor
    from jaxnets.inference.evaluate import evaluate_checkpoint
    from jaxnets.train import TrainConfig, fit

    result = fit(TrainConfig(model="lenet5", data="digits", epochs=2, ema=0.9, out=str(tmp_path / "r"), quiet=True,
                             tensorboard=False, report=False))
    predictor = Predictor.from_checkpoint(result.out)
    checkpoints = Checkpoints(result.out / "checkpoints", "val_accuracy", read_only=True)
    try:
        template = jax.tree.map(np.asarray, predictor.variables)
        template = {"params": template["params"], "batch_stats": {}}
        raw, _ = checkpoints.restore_variables("best", template, "model")
        average, _ = checkpoints.restore_variables("best", template, "ema")
    finally:
        checkpoints.close()
    kernel = lambda v: np.asarray(v["params"]["Conv_0"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(kernel(predictor.variables), kernel(average))
    assert not np.allclose(kernel(raw), kernel(average))
    evaluated = evaluate_checkpoint(result.out, "digits")
    assert evaluated["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])


def test_lenet5_with_the_cli_defaults_reaches_97_percent_on_the_digits(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "jaxnets", "train", "--model", "lenet5", "--data", "digits",
                           "--out", str(out), "--quiet", "--no-tensorboard", "--no-report"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 30 and config["optim"]["optimizer"] == "adamw"  # the recipe, not the bare defaults
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0.97


def test_equalize_matches_pil():
    from PIL import Image, ImageOps

    from jaxnets.data.trivial import _equalize

    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
             np.where(rng.random((16, 16, 1)) < 0.75, 0, 255).astype(np.uint8),  # a digit's black background
             np.full((8, 8, 1), 77, np.uint8)]  # a constant channel stays as it is
    for image in cases:
        ours = np.round(np.asarray(_equalize(jnp.asarray(image / 255, jnp.float32))) * 255).astype(np.uint8)
        pil = np.asarray(ImageOps.equalize(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)))
        np.testing.assert_array_equal(ours.reshape(pil.shape), pil)


def test_sharpness_matches_pil():
    from PIL import Image, ImageEnhance

    from jaxnets.data.trivial import _sharpen

    image = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    for factor in (0.1, 1.0, 1.9):
        ours = np.asarray(_sharpen(jnp.asarray(image / 255, jnp.float32), factor)) * 255
        pil = np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(factor), np.float32)
        assert np.abs(ours - pil).max() <= 1.5  # PIL rounds its smoothed image to 8 bits before blending
        for border in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):  # borders are kept
            np.testing.assert_array_equal(np.rint(ours[border]), image[border])


def test_the_average_moves_only_when_an_accumulated_update_is_applied():
    accumulate = optax.MultiSteps(optax.sgd(0.5), every_k_schedule=2)
    model, state = _tiny_state(accumulate, ema=True)
    step = make_train_step(model, accumulate, StepConfig(SPEC, 3, False, ema=0.5))
    start = np.asarray(state.ema["params"]["Dense_0"]["kernel"]).copy()
    state, _ = step(state, _batch(4, 0))
    np.testing.assert_array_equal(np.asarray(state.ema["params"]["Dense_0"]["kernel"]), start)  # inside a group
    state, _ = step(state, _batch(4, 1))
    assert not np.allclose(np.asarray(state.ema["params"]["Dense_0"]["kernel"]), start)  # the group's update


def test_with_accumulation_the_schedule_counts_updates_and_still_ends_the_run():
    from jaxnets.train.optim import OptimConfig, make_optimizer

    cfg = OptimConfig(optimizer="adamw", lr=1.0, schedule="warmup_cosine", warmup_epochs=1.0)
    _, schedule = make_optimizer(cfg, steps_per_epoch=10, epochs=10, accumulate=4)  # 100 batches, 25 updates
    assert float(schedule(0)) == 0.0 and float(schedule(11)) == pytest.approx(1.0, abs=0.02)  # warm-up: 1 epoch
    assert float(schedule(99)) < 0.02  # the cosine reaches its end with the run, not 20 % before it


def test_a_recipe_gives_way_to_the_options_given():
    from jaxnets.train.config import TrainConfig

    sgd = TrainConfig.recommended("resnet18", optim={"optimizer": "momentum"})
    assert sgd.optim.optimizer == "momentum" and sgd.optim.weight_decay == 0.0  # no AdamW-sized L2 for SGD
    assert TrainConfig.recommended("lenet5", optim={"lr": 0.1}).optim.lr == 0.1
    assert TrainConfig.recommended("lenet5", epochs=3).epochs == 3 and TrainConfig.recommended("lenet5").epochs == 30
