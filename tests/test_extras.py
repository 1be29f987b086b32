"""The light core and its extras: the embedded digits equal scikit-learn's, a missing extra is one line naming the
`pip install` (exit 2 from the CLI), training works without matplotlib, the pyproject's extras, floors and CI's
pinned floors agree, and importing a module never exits the process.

A missing package is made missing for one child process only (`sys.modules[name] = None`, which makes its import
fail as if it were not installed); the core-only CI environment has none of them installed at all."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from conftest import extra

import jaxnets
from jaxnets.data.sources import digits, digits_arrays
from jaxnets.extras import EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# run jaxnets' CLI with some packages hidden: argv[1] is a comma-separated list of them
HIDDEN_CLI = ("import sys\nfor m in filter(None, sys.argv[1].split(',')):\n    sys.modules[m] = None\n"
              "from jaxnets.cli import main\nsys.exit(main(sys.argv[2:]))\n")
EXTRA_PACKAGES = "bentoml,tensorflow_datasets,sklearn,matplotlib,safetensors,huggingface_hub,jax2onnx,onnx"


def _cli(*args: str, hidden: str = EXTRA_PACKAGES, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDDEN_CLI, hidden, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_the_embedded_digits_equal_scikit_learns():
    load_digits = extra("sklearn.datasets").load_digits
    images, labels = digits_arrays()
    theirs = load_digits()
    assert images.dtype == theirs.images.dtype and labels.dtype == theirs.target.dtype
    np.testing.assert_array_equal(images, theirs.images)
    np.testing.assert_array_equal(labels, theirs.target)
    ds = digits()  # the pixels jaxnets trains on: scikit-learn's 0..16 scaled to 0..255, as before
    np.testing.assert_array_equal(ds.sources, np.clip(np.rint(theirs.images * (255 / 16)), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(ds.labels, theirs.target)


@pytest.mark.core
def test_the_digits_load_without_scikit_learn():
    code = ("import sys\nsys.modules['sklearn'] = None\nfrom jaxnets.data.sources import digits\nd = digits()\n"
            "print(len(d), d.sources.shape, int(d.sources.max()), sorted(set(d.labels.tolist())) == list(range(10)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1797", "(1797,", "8,", "8)", "255", "True"]
    assert (ROOT / "jaxnets" / "data" / "DIGITS_LICENSE.txt").read_text().count("BSD 3-Clause") == 1


@pytest.mark.core
def test_require_names_the_pip_install_and_is_an_import_and_a_value_error():
    assert require("serve", "json") is importlib.import_module("json")
    with pytest.raises(MissingExtra, match=re.escape("pip install 'jaxnets[serve]'")) as caught:
        require("serve", "jaxnets_no_such_module")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ValueError)
    assert caught.value.extra == "serve" and "\n" not in str(caught.value)
    with pytest.raises(KeyError):
        require("nonsense", "json")


@pytest.mark.core
@pytest.mark.parametrize(("args", "extra_name"), [
    (("serve",), "serve"),
    (("package", "--checkpoint", "nowhere"), "serve"),
    (("train", "--model", "lenet5", "--data", "tfds:mnist", "--out", "r"), "tfds"),
    (("convert", "--from", "timm:resnet18.a1_in1k", "--out", "c"), "pretrained"),
])
def test_a_missing_extra_is_one_line_naming_the_pip_install_and_exit_2(tmp_path, args, extra_name):
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'jaxnets[{extra_name}]'" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []  # nothing made


@pytest.mark.core
def test_a_safetensors_file_without_the_extra_is_one_line(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    out = _cli("convert", "--from", str(tmp_path / "w.safetensors"), "--model", "lenet5", "--out",
               str(tmp_path / "c"))
    assert out.returncode == 2 and "pip install 'jaxnets[pretrained]'" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.core
@pytest.mark.slow
def test_the_core_trains_predicts_and_evaluates_the_digits_without_any_extra(tmp_path):
    """What a plain `pip install .` user does first, every extra hidden (matplotlib included): the run is whole,
    report.html and curves.png carry the note naming [report], the TensorBoard events are written."""
    run = tmp_path / "r"
    train = _cli("train", "--model", "lenet5", "--data", "digits", "--epochs", "2", "--out", str(run), "--quiet")
    assert train.returncode == 0, train.stderr
    assert "Traceback" not in train.stderr and "WARNING" not in train.stderr, train.stderr
    for name in ("report.html", "curves.png", "confusion.png", "top_losses.png", "metrics.json", "history.csv"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray(digits().sources[0]).save(image)
    predict = _cli("predict", "--checkpoint", str(run), "--json", "--explain", str(tmp_path / "cams"), str(image))
    assert predict.returncode == 0, predict.stderr
    assert '"label"' in predict.stdout and (tmp_path / "cams" / "digit_cam.png").is_file()
    evaluate = _cli("evaluate", "--checkpoint", str(run), "--data", "digits", "--json")
    assert evaluate.returncode == 0 and '"accuracy"' in evaluate.stdout, evaluate.stderr


@pytest.mark.core
def test_the_figures_without_matplotlib_are_a_note_naming_the_extra():
    code = ("import sys\nsys.modules['matplotlib'] = None\nimport io\nimport numpy as np\nfrom PIL import Image\n"
            "from jaxnets.report import curves_png\nfrom jaxnets.report.figures import confusion_png, has_figures\n"
            "from jaxnets.report.overlay import overlay_png\n"
            "assert not has_figures()\n"
            "for png in (curves_png([{'epoch': 1, 'train_loss': 1.0, 'train_accuracy': 0.5}]),"
            " confusion_png(np.eye(2, dtype=int), ['a', 'b'])):\n"
            "    assert Image.open(io.BytesIO(png)).size == (560, 60)\n"
            "px = np.zeros((8, 8, 1), np.uint8)\n"
            "print(Image.open(io.BytesIO(overlay_png(px, np.linspace(0, 1, 64).reshape(8, 8, 1)[..., 0]))).size)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "(8, 8)", out.stderr


def test_the_overlays_colours_are_matplotlibs_jet():
    colormaps = extra("matplotlib").colormaps
    from jaxnets.report.overlay import jet

    heat = np.concatenate([np.linspace(0, 1, 4097), np.random.default_rng(0).random(1000), [0.0, 1.0, 0.5]])
    np.testing.assert_allclose(jet(heat), colormaps["jet"](heat)[..., :3], rtol=0, atol=1e-12)


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


@pytest.mark.core
def test_the_core_has_no_extra_and_every_extra_is_declared():
    core = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert not core & {"bentoml", "tensorflow-datasets", "array-record", "scikit-learn", "matplotlib",
                       "python-multipart", "safetensors", "huggingface-hub", "jax2onnx", "onnx", "torch"}
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRAS) | {"all", "dev"} == set(optional)
    assert optional["all"] == [f"jaxnets[{','.join(EXTRAS)}]"] and "jaxnets[all]" in optional["dev"]
    assert "scikit-learn" in _requirement_names(optional["dev"])


@pytest.mark.core
def test_the_floors_are_the_versions_ci_pins():
    """pyproject's floors of jax, flax, optax and orbax-checkpoint are what .ci/floors.txt pins for CI's dev
    environment (the one `make test` runs in), so a floor is always a version that CI ran."""
    floors = {}
    for requirement in PYPROJECT["project"]["dependencies"]:
        if match := re.fullmatch(r"([\w.-]+)>=([\w.]+)", requirement):
            floors[match[1].lower()] = match[2]
    pinned = dict(re.findall(r"^([\w.-]+)==([\w.]+)", (ROOT / ".ci" / "floors.txt").read_text(), re.M))
    for name in ("jax", "flax", "optax", "orbax-checkpoint"):
        assert pinned[name] == floors[name], name
    assert pinned["jaxlib"] == floors["jax"]


def _all_modules() -> list[str]:
    names = ["jaxnets"]
    for info in pkgutil.walk_packages(jaxnets.__path__, "jaxnets."):
        names.append(info.name)
    return names


@pytest.mark.core
def test_importing_any_module_never_exits_the_process():
    code = ("import importlib, sys\nfrom jaxnets.extras import MissingExtra\nbad = []\n"
            "for name in sys.argv[1:]:\n    try:\n        importlib.import_module(name)\n"
            "    except MissingExtra:\n        pass\n"
            "    except ImportError as e:\n        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
            "    except SystemExit as e:\n        bad.append(f'{name}: SystemExit({e.code})')\n"
            "print('\\n'.join(bad) or 'ok')\n")
    names = [n for n in _all_modules() if n != "jaxnets.__main__"]  # the service too: it checks its model at start
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    missing = {m for m in EXTRA_PACKAGES.split(",") if importlib.util.find_spec(m) is None}
    # in the core environment a module of an extra may fail with its package missing; nothing else may fail
    problems = [line for line in out.stdout.strip().splitlines()
                if line != "ok" and not any(f"No module named '{m}" in line for m in missing | {"python_multipart"})]
    assert problems == [], problems
