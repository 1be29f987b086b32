"""Every example script runs end to end on tiny data (so none rots), and the hand-written backward pass
of the from-scratch network matches jax.grad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from imagefiles import write_class_folder, write_idx

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import llayer_from_scratch as scratch  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("photos"), per_class=10, size=40)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def _run(script, *args):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args, "--epochs", "1", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout and "best checkpoint" in out.stdout
    return out.stdout


@pytest.mark.parametrize("script,extra", [
    ("logistic_regression.py", ["--size", "16"]),
    ("shallow_net.py", ["--size", "16"]),
    ("deep_mlp.py", ["--size", "16", "--hidden", "20-10-5"]),
    ("deep_mlp.py", ["--size", "16", "--hidden", "30-30-20-20", "--init", "small"]),
    ("alexnet.py", ["--size", "32", "--augment", "classic"]),
    ("vgg16.py", ["--size", "32", "--batch-size", "8"]),
    ("resnet18.py", ["--size", "32"]),
])
def test_photo_examples_run_end_to_end(script, extra, photos, tmp_path):
    _run(script, "--data", str(photos), "--out", str(tmp_path / "run"), *extra)
    assert (tmp_path / "run" / "checkpoints" / "model_card.json").is_file()


def test_mnist_examples_run_end_to_end(mnist, tmp_path):
    _run("lenet5_mnist.py", "--data", str(mnist), "--out", str(tmp_path / "lenet"))
    _run("alexnet.py", "--mnist", "--data", str(mnist), "--size", "32", "--out", str(tmp_path / "alex"))


def test_from_scratch_example_runs():
    out = subprocess.run([sys.executable, str(EXAMPLES / "llayer_from_scratch.py"), "--iterations", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test accuracy" in out.stdout


@pytest.mark.parametrize("activations", [["relu", "relu", "sigmoid"], ["tanh", "sigmoid", "sigmoid"]])
def test_hand_written_backward_matches_jax_grad_in_float64(activations):
    with jax.enable_x64():
        rng = np.random.default_rng(0)
        X = jnp.asarray(rng.normal(size=(6, 30)))
        Y = jnp.asarray((rng.random((1, 30)) > 0.5).astype(np.float64))
        params = scratch.init_params([6, 5, 3, 1], "he", seed=1, dtype=jnp.float64)
        AL, caches = scratch.forward(params, X, activations)
        mine = scratch.backward(params, caches, AL, Y, activations)
        auto = jax.grad(lambda p: scratch.cost(scratch.forward(p, X, activations)[0], Y))(params)
        a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(mine)])
        b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(auto)])
        assert a.dtype == np.float64
        assert np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)) < 1e-5


def test_small_init_stays_stuck_while_he_learns():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(10, 200)), jnp.float32)
    Y = jnp.asarray((np.asarray(X[0] + X[1]) > 0).astype(np.float32)[None])
    acts = ["relu"] * 4 + ["sigmoid"]
    _, he = scratch.train(X, Y, [10, 30, 30, 20, 20, 1], acts, "he", lr=0.0075, iterations=1500, every=1499)
    _, small = scratch.train(X, Y, [10, 30, 30, 20, 20, 1], acts, "small", lr=0.0075, iterations=1500, every=1499)
    assert he[-1] < 0.4
    assert abs(small[-1] - 0.693) < 0.01  # the classic lesson: stuck at ln 2


def test_finetune_example_starts_from_another_run(photos, tmp_path):
    """The fine-tune example end to end, its weights a jaxnets run of the same model (ImageNet weights need
    internet: test_pretrained covers the download path against a local server)."""
    _run("resnet18.py", "--data", str(photos), "--size", "32", "--out", str(tmp_path / "source"))
    stdout = _run("finetune.py", "--data", str(photos), "--size", "32", "--weights", str(tmp_path / "source"),
                  "--out", str(tmp_path / "tuned"))
    assert "fine-tuned from" in stdout and (tmp_path / "tuned" / "checkpoints" / "model_card.json").is_file()
