"""Explanations (inference/explain.py): Grad-CAM maps for the CNNs and gradient saliency for the MLPs, at the
model's input size, in [0, 1], for the predicted class or a chosen one, through the Predictor's buckets."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnets.data.preprocess import PreprocessSpec
from jaxnets.inference.explain import explain_pixels, has_cam_layer
from jaxnets.models import create_model, init_variables


def _pixels(n: int, spec: PreprocessSpec, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *spec.shape), dtype=np.uint8)


def test_logistic_regressions_map_is_its_weight_image_for_the_class():
    spec = PreprocessSpec(8, 8, 1, normalize="half")
    model = create_model("logistic_regression", 3)
    variables = init_variables(model, spec.shape, 0)
    for cls in range(3):
        maps, chosen = explain_pixels(model, variables, spec, False, _pixels(2, spec), np.array([cls, cls]))
        weights = np.abs(np.asarray(variables["params"]["Dense_0"]["kernel"][:, cls])).reshape(8, 8)
        expected = (weights - weights.min()) / (weights.max() - weights.min())
        assert list(chosen) == [cls, cls]
        np.testing.assert_allclose(maps, np.stack([expected, expected]), atol=1e-5)


@pytest.mark.parametrize("name, spec, cam", [
    ("lenet5", PreprocessSpec(32, 32, 1, normalize="half"), True),
    ("alexnet", PreprocessSpec(64, 64, 3, normalize="imagenet"), True),
    ("vgg11_bn", PreprocessSpec(32, 32, 3, normalize="imagenet"), True),
    ("resnet18", PreprocessSpec(32, 32, 3, normalize="imagenet"), True),
    ("mlp", PreprocessSpec(16, 16, 3, normalize="half"), False),
])
def test_every_family_gets_a_map_at_its_input_size_for_the_predicted_class(name, spec, cam):
    model = create_model(name, 4)
    variables = init_variables(model, spec.shape, 1)
    assert has_cam_layer(model, variables, spec.shape) is cam
    pixels = _pixels(3, spec)
    maps, chosen = explain_pixels(model, variables, spec, False, pixels)
    logits = np.asarray(model.apply(variables, (pixels / np.float32(255) - np.asarray(spec.mean_std()[0]))
                                    / np.asarray(spec.mean_std()[1])))
    assert maps.shape == (3, spec.height, spec.width) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.isfinite(maps).all()
    assert list(chosen) == list(logits.argmax(1))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from jaxnets.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("explain") / "run"
    fit(TrainConfig(model="lenet5", data="digits", epochs=1, out=str(out), quiet=True))
    return out


def test_the_predictor_explains_through_its_buckets_for_the_predicted_or_a_chosen_class(digits_run):
    from jaxnets import Predictor

    predictor = Predictor.from_checkpoint(digits_run)
    pixels = _pixels(3, predictor.spec)  # padded to the bucket of 8
    maps, chosen = predictor.explain_pixels(pixels)
    direct, _ = explain_pixels(predictor.model, predictor.variables, predictor.spec, False, pixels)
    np.testing.assert_allclose(maps, direct, atol=1e-5)
    assert list(chosen) == list(predictor.predict_pixels(pixels).argmax(1))
    other, forced = predictor.explain_pixels(pixels, classes=[7, 7, 7])
    assert list(forced) == [7, 7, 7] and not np.allclose(other, maps)


def _quadrant_squares(n: int, seed: int, size: int = 32, side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a white square somewhere inside the top-left quadrant; class 1: inside the bottom-right one;
    uniform noise over most of the range everywhere else. (With dark noise alone a network may decide by the
    darkness of the other quadrant, and a faithful map then shows that quadrant.)"""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 200, (n, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    half = size // 2
    for image, label in zip(images, labels, strict=True):
        r, c = rng.integers(0, half - side + 1, 2) + half * label
        image[r:r + side, c:c + side] = 255
    return images, labels


@pytest.mark.parametrize("model, epochs", [("lenet5", 12), ("mlp", 10)])
def test_the_map_lies_on_the_square_that_decides_the_class(tmp_path, model, epochs):
    """Grad-CAM (LeNet-5) and gradient × input (MLP): for at least 90 % of held-out images at least half of the
    map's mass is in the square's quadrant, for the predicted class, at the model's input size."""
    from jaxnets import Predictor
    from jaxnets.data.dataset import Splits
    from jaxnets.data.sources import from_arrays
    from jaxnets.train import TrainConfig, fit

    names = ["top_left", "bottom_right"]
    parts = [from_arrays(*_quadrant_squares(n, seed), names) for n, seed in ((1500, 0), (200, 1), (200, 2))]
    fit(TrainConfig(model=model, data="arrays", epochs=epochs, out=str(tmp_path / "run"), quiet=True,
                    tensorboard=False), Splits(*parts))
    predictor = Predictor.from_checkpoint(tmp_path / "run")
    images, labels = _quadrant_squares(200, 2)
    pixels = predictor.pixels(list(images))
    assert (predictor.predict_pixels(pixels).argmax(1) == labels).mean() >= 0.95
    maps, _ = predictor.explain_pixels(pixels)
    half = maps.shape[1] // 2
    top_left, bottom_right = maps[:, :half, :half].sum((1, 2)), maps[:, half:, half:].sum((1, 2))
    share = np.where(labels == 0, top_left, bottom_right) / maps.sum((1, 2))
    assert (share >= 0.5).mean() >= 0.9, np.sort(share)[:30]


def test_a_shift_every_class_shares_leaves_the_map_as_it_is():
    """The map explains the class's log-odds, which a shift of every logit by the same amount does not change
    (the logit alone would move with it)."""
    spec = PreprocessSpec(32, 32, 1, normalize="half")
    model = create_model("lenet5", 3)
    variables = init_variables(model, spec.shape, 0)
    head = dict(variables["params"]["Dense_2"])
    shared = np.random.default_rng(0).normal(0, 1, (head["kernel"].shape[0], 1)).astype(np.float32)
    shifted = {**variables, "params": {**variables["params"], "Dense_2": {**head, "kernel": head["kernel"] + shared}}}
    pixels = _pixels(4, spec)
    before, _ = explain_pixels(model, variables, spec, False, pixels, np.array([0, 1, 2, 0]))
    after, _ = explain_pixels(model, shifted, spec, False, pixels, np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_pixels_of_the_wrong_kind_are_refused():
    spec = PreprocessSpec(8, 8, 1)
    model = create_model("logistic_regression", 2)
    variables = init_variables(model, spec.shape, 0)
    with pytest.raises(ValueError, match="uint8"):
        explain_pixels(model, variables, spec, False, np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        explain_pixels(model, variables, spec, False, np.zeros((1, 9, 8, 1), np.uint8))


def test_predict_explain_writes_the_overlay_and_the_raw_map_and_never_overwrites(digits_run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from jaxnets import Predictor

    images = []
    for i, value in enumerate((40, 200)):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.full((28, 28), value, np.uint8)).save(path)
        images.append(str(path))
    cli = [sys.executable, "-m", "jaxnets", "predict", "--checkpoint", str(digits_run), "--explain",
           str(tmp_path / "cams")]
    done = subprocess.run([*cli, "--class", "3", *images], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    predictor = Predictor.from_checkpoint(digits_run)
    expected, _ = predictor.explain_pixels(predictor.pixels(images), classes=[3, 3])
    for i in range(2):
        raw = np.load(tmp_path / "cams" / f"digit{i}_cam.npy")
        assert raw.shape == (32, 32) and raw.dtype == np.float32
        np.testing.assert_allclose(raw, expected[i], atol=1e-5)
        assert Image.open(tmp_path / "cams" / f"digit{i}_cam.png").size == (32, 32)
    before = (tmp_path / "cams" / "digit0_cam.npy").read_bytes()
    again = subprocess.run([*cli, images[0]], capture_output=True, text=True)
    assert again.returncode == 2 and "does not overwrite" in again.stderr
    assert (tmp_path / "cams" / "digit0_cam.npy").read_bytes() == before
    wrong = subprocess.run([*cli, "--class", "eleven", images[0]], capture_output=True, text=True)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and "eleven" in wrong.stderr


def test_predict_explain_names_its_stage_and_takes_another_or_refuses_one_the_model_lacks(digits_run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from jaxnets import Predictor

    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    cli = [sys.executable, "-m", "jaxnets", "predict", "--checkpoint", str(digits_run), str(image)]
    default = subprocess.run([*cli, "--explain", str(tmp_path / "a")], capture_output=True, text=True)
    assert default.returncode == 0 and "Grad-CAM from stage 2 (10x10 positions" in default.stderr, default.stderr
    first = subprocess.run([*cli, "--explain", str(tmp_path / "b"), "--cam-stage", "1"], capture_output=True, text=True)
    assert first.returncode == 0 and "stage 1 (28x28" in first.stderr, first.stderr
    predictor = Predictor.from_checkpoint(digits_run)
    expected, _ = predictor.explain_pixels(predictor.pixels([str(image)]), stage=1)
    np.testing.assert_allclose(np.load(tmp_path / "b" / "digit_cam.npy"), expected[0], atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "a" / "digit_cam.npy"), expected[0])
    for extra in (["--explain", str(tmp_path / "c"), "--cam-stage", "5"], ["--cam-stage", "1"]):
        wrong = subprocess.run([*cli, *extra], capture_output=True, text=True)
        assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert not (tmp_path / "c").exists()
