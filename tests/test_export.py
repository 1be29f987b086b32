"""Export (inference/export.py) and folder-to-CSV prediction (inference/folder.py): onnxruntime and the deserialized
StableHLO give the Predictor's probabilities within 1e-4 for LeNet-5, an MLP and ResNet-18 at batch sizes 1 and 5;
StableHLO loads with JAX alone; an operation that cannot be exported is named; the CLI never writes over a file;
a folder with subfolders and a broken file gives one row per readable image and the broken one reported."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from jaxnets.data.preprocess import PreprocessSpec
from jaxnets.inference.card import ModelCard
from jaxnets.inference.export import ExportError, export_bytes
from jaxnets.inference.predictor import Predictor
from jaxnets.models import create_model, init_variables


def _predictor(name: str, spec: PreprocessSpec, classes: int = 4, binary: bool = False, seed: int = 0) -> Predictor:
    """Random weights; batch statistics moved away from (0, 1) so that inference-mode BN is exercised."""
    model = create_model(name, 1 if binary else classes)
    variables = init_variables(model, spec.shape, seed)
    rng = np.random.default_rng(seed)
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, a: (rng.uniform(0.5, 2.0, a.shape) if "var" in str(path[-1]) else rng.normal(0, 0.3, a.shape)
                             ).astype(np.float32), variables["batch_stats"])
    card = ModelCard(model=name, model_options={}, classes=tuple(f"c{i}" for i in range(classes)), binary=binary,
                     preprocess=spec)
    return Predictor(model, variables, card)


CASES = [
    ("lenet5", PreprocessSpec(32, 32, 1, normalize="half"), False),
    ("lenet5", PreprocessSpec(32, 32, 1, normalize="half"), True),
    ("mlp", PreprocessSpec(16, 16, 3, normalize="half"), False),
    ("resnet18", PreprocessSpec(32, 32, 3, normalize="imagenet"), False),
    ("efficientnet_lite0", PreprocessSpec(40, 40, 3, normalize="half"), False),  # TF SAME pads, depthwise sums
]


@pytest.mark.parametrize("name, spec, binary", CASES,
                         ids=["lenet5", "lenet5-binary", "mlp", "resnet18", "efficientnet_lite0"])
def test_onnx_and_stablehlo_give_the_predictors_probabilities(name, spec, binary):
    import onnxruntime as ort

    predictor = _predictor(name, spec, classes=2 if binary else 4, binary=binary)
    session = ort.InferenceSession(export_bytes(predictor, "onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    assert session.get_inputs()[0].type == "tensor(uint8)" and not isinstance(session.get_inputs()[0].shape[0], int)
    exported = jax.export.deserialize(bytearray(export_bytes(predictor, "stablehlo", ["cpu"])))
    for n in (1, 5):
        pixels = np.random.default_rng(n).integers(0, 256, (n, *spec.shape), dtype=np.uint8)
        expected = predictor.predict_pixels(pixels)
        np.testing.assert_allclose(session.run(None, {"pixels": pixels})[0], expected, atol=1e-4)
        np.testing.assert_allclose(np.asarray(exported.call(pixels)), expected, atol=1e-4)


class _HostStep(nn.Module):
    """A model with a step only the host can run (a Python callback): neither format can hold it."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_an_operation_that_cannot_be_exported_is_named():
    spec = PreprocessSpec(4, 4, 1, normalize="half")
    model = _HostStep()
    card = ModelCard(model="mlp", model_options={}, classes=("a", "b", "c"), binary=False, preprocess=spec)
    predictor = Predictor(model, init_variables(model, spec.shape, 0), card)
    with pytest.raises(ExportError, match=r"ONNX.*pure_callback"):
        export_bytes(predictor, "onnx")
    with pytest.raises(ExportError, match=r"StableHLO.*pure_callback"):
        export_bytes(predictor, "stablehlo", ["cpu"])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from jaxnets.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("export") / "run"
    fit(TrainConfig(model="lenet5", data="digits", epochs=1, out=str(out), quiet=True, tensorboard=False,
                    report=False))
    return out


def _jaxnets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxnets", *args], capture_output=True, text=True, timeout=300)


def test_the_stablehlo_file_runs_with_jax_alone_and_the_cli_never_writes_over_a_file(digits_run, tmp_path):
    out = tmp_path / "model.stablehlo"
    done = _jaxnets("export", "--checkpoint", str(digits_run), "--format", "stablehlo", "--out", str(out))
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((tmp_path / "model.stablehlo.json").read_text())
    assert sidecar["classes"] == [str(i) for i in range(10)] and sidecar["preprocess"]["height"] == 32
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from jax import export
        exported = export.deserialize(bytearray(open({str(out)!r}, "rb").read()))
        probs = exported.call(np.load({str(tmp_path / "pixels.npy")!r}))
        assert not any(m.startswith("jaxnets") for m in sys.modules)
        print(json.dumps(np.asarray(probs).tolist()))
    """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    np.testing.assert_allclose(np.array(json.loads(ran.stdout)), Predictor.from_checkpoint(digits_run)
                               .predict_pixels(pixels), atol=1e-4)
    before = out.read_bytes()
    again = _jaxnets("export", "--checkpoint", str(digits_run), "--format", "onnx", "--out", str(out))
    assert again.returncode == 2 and "does not overwrite" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before


def test_a_folder_becomes_one_csv_row_per_readable_image_and_the_broken_file_is_reported(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    images = np.clip(np.rint(load_digits().images[:7] * (255 / 16)), 0, 255).astype(np.uint8)
    folder = tmp_path / "photos"
    paths = []
    for i, image in enumerate(images):
        path = folder / ("a" if i < 3 else "b/c") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    odd = folder / 'a' / 'with, comma "and quotes".png'  # the CSV quotes it
    Image.fromarray(images[0]).save(odd)
    paths.append(odd)
    out = tmp_path / "out.csv"
    done = _jaxnets("predict", "--checkpoint", str(digits_run), str(folder), "--csv", str(out), "--tta", "flip")
    assert done.returncode == 1  # a file was skipped
    assert "broken.jpg" in done.stderr and "8 image(s)" in done.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    predictor = Predictor.from_checkpoint(digits_run)
    pixels = predictor.pixels(paths)
    flipped = (predictor.predict_pixels(pixels) + predictor.predict_pixels(pixels[:, :, ::-1])) / 2
    by_path = {r["path"]: r for r in rows}
    for path, expected in zip(paths, flipped, strict=True):
        row = by_path[str(path)]
        got = np.array([float(row[f"p_{c}"]) for c in predictor.classes])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert row["label"] == predictor.classes[int(expected.argmax())]
    assert not np.allclose(flipped, predictor.predict_pixels(pixels), atol=1e-4)  # the flip did something
