"""Transfer learning: torchvision/timm state dicts imported exactly, the download path against a local HTTP
server, and a fine-tune whose frozen phase leaves the backbone bit-identical.

The torch models are torchvision's and timm's own definitions (see torch_reference.py for how torchvision is
imported beside the CPU wheel of torch), with random weights and non-trivial BatchNorm statistics.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hubserver import HubFile, HubServer
from PIL import Image
from torch_reference import randomize_batchnorm, torchvision

from jaxnets import Predictor
from jaxnets.models import create_model, init_variables
from jaxnets.pretrained import WeightsError, convert, imagenet_classes
from jaxnets.pretrained.layout import ImportMismatch, import_state
from jaxnets.pretrained.sources import HUGGINGFACE, TORCHVISION, download, read_state

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _torch_model(name: str, seed: int = 0, source: str = "torchvision"):
    import torch

    torch.manual_seed(seed)
    if source == "timm":
        torchvision()
        timm = pytest.importorskip("timm")
        model = timm.create_model(name, pretrained=False)
    else:
        model = getattr(torchvision().models, name)()
    randomize_batchnorm(model, seed)
    return model.eval()


def _torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def _save(model, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        import torch

        torch.save(model.state_dict(), path)
    return path


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _torchvision_normalised(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.slow
@pytest.mark.parametrize("name, small, suffix", [
    ("alexnet", 96, ".pth"), ("vgg11_bn", 64, ".safetensors"), ("vgg16", 64, ".pth"),
    ("resnet18", 96, ".safetensors"), ("resnet50", 64, ".pth"),
])
def test_converted_torchvision_models_give_torchs_logits_and_probabilities(name, small, suffix, tmp_path):
    import torch

    reference = _torch_model(name)
    out = convert(str(_save(reference, tmp_path / f"weights{suffix}")), name, tmp_path / "converted")
    predictor = Predictor.from_checkpoint(out)
    assert predictor.classes == imagenet_classes() and len(predictor.classes) == 1000
    for size in (224, small):
        x = _torchvision_normalised(_pixels(2, size, seed=size))
        ours = np.asarray(predictor.model.apply(predictor.variables, x, train=False))
        theirs = _torch_logits(reference, x)
        scale = np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= 1e-4 * scale, (name, size, np.abs(ours - theirs).max(), scale)
    pixels = _pixels(3, 224, seed=7)
    with torch.no_grad():
        expected = torch.softmax(torch.from_numpy(_torch_logits(reference, _torchvision_normalised(pixels))), 1)
    np.testing.assert_allclose(np.asarray(predictor.predict_pixels(pixels)), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_one_training_step_updates_batchnorm_statistics_like_torch(name):
    import torch

    reference = _torch_model(name, seed=3)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    model = create_model(name, 1000, **({"dropout_rate": 0.0} if name.startswith("vgg") else {}))
    variables, _ = import_state(name, init_variables(model, (64, 64, 3), 0), state)
    x = np.random.default_rng(1).standard_normal((4, 64, 64, 3)).astype(np.float32)
    reference.train()
    for m in reference.modules():  # dropout off on both sides: the statistics are the question
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    theirs_logits = _torch_logits(reference, x)
    ours_logits, updated = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": __import__("jax").random.PRNGKey(0)})
    np.testing.assert_allclose(np.asarray(ours_logits), theirs_logits, atol=1e-4 * np.abs(theirs_logits).max())
    after = {k: v.numpy() for k, v in reference.state_dict().items()}
    imported, _ = import_state(name, {"params": variables["params"], "batch_stats": updated["batch_stats"]}, after)
    flat = lambda tree: __import__("jax").tree.leaves(tree)  # noqa: E731
    for ours, theirs in zip(flat(updated["batch_stats"]), flat(imported["batch_stats"]), strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-5)
    changed = [not np.allclose(a, b) for a, b in zip(flat(variables["batch_stats"]), flat(updated["batch_stats"]),
                                                     strict=True)]
    assert all(changed)  # every running statistic moved, as torch's did


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_resnets_share_torchvisions_key_names_and_import_exactly(name, tmp_path):
    reference = _torch_model(name, seed=5, source="timm")
    model = create_model(name, 1000)
    variables, report = import_state(name, init_variables(model, (64, 64, 3), 0),
                                     read_state(_save(reference, tmp_path / "timm.safetensors")))
    x = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
    theirs = _torch_logits(reference, x)
    ours = np.asarray(model.apply(variables, x, train=False))
    assert report.fresh_head is None and np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_another_number_of_classes_gets_a_fresh_head_and_grey_input_a_summed_stem(tmp_path):
    reference = _torch_model("resnet18", seed=1)
    state = read_state(_save(reference, tmp_path / "w.pth"))
    model = create_model("resnet18", 3)
    fresh = init_variables(model, (32, 32, 1), 0)
    variables, report = import_state("resnet18", fresh, state, channels=1)
    assert report.fresh_head and "1000 outputs" in report.fresh_head and report.summed_stem
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
    np.testing.assert_allclose(variables["params"]["conv1"]["kernel"][..., 0, :],
                               state["conv1.weight"].sum(1).transpose(1, 2, 0), rtol=1e-6)
    grey = np.random.default_rng(0).standard_normal((2, 32, 32, 1)).astype(np.float32)
    rgb = np.repeat(grey, 3, axis=-1)  # a grey image as RGB: the summed stem must see the same thing
    full, _ = import_state("resnet18", init_variables(create_model("resnet18", 3), (32, 32, 3), 0), state)
    full["params"]["fc"] = variables["params"]["fc"]
    np.testing.assert_allclose(np.asarray(model.apply(variables, grey)), np.asarray(model.apply(full, rgb)),
                               rtol=1e-4, atol=1e-4)


def test_a_state_dict_of_another_model_is_refused_naming_the_tensor(tmp_path):
    state = read_state(_save(_torch_model("resnet18"), tmp_path / "w.safetensors"))
    with pytest.raises(ImportMismatch, match=r"layer1\.0\.conv1 has shape \(3, 3, 64, 64\)"):
        import_state("resnet50", init_variables(create_model("resnet50", 10), (32, 32, 3), 0), state)
    with pytest.raises(ImportMismatch, match=r"has no layer1\.2\.conv1\.weight"):
        import_state("resnet34", init_variables(create_model("resnet34", 10), (32, 32, 3), 0), state)
    with pytest.raises(ImportMismatch, match=r"no place for: extra\.weight"):
        import_state("resnet18", init_variables(create_model("resnet18", 10), (32, 32, 3), 0),
                     {**state, "extra.weight": np.zeros(3, np.float32)})


# ------------------------------------------------------------------------------------------------ download

class _Server:
    """A local HTTP server: path → (body, extra headers), or path → a redirect (status 302, its Location and
    headers), counting the requests it answers (torchvision's files and plain URLs; the hub is hubserver.py)."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path in server.redirects:
                    location, headers = server.redirects[self.path]
                    self.send_response(302)
                    self.send_header("Location", location)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path not in server.files:
                    self.send_error(404)
                    return
                body, headers = server.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path / "cache"))
    s = _Server()
    monkeypatch.setenv("JAXNETS_WEIGHTS_MIRROR", s.url)  # official URLs are fetched from here, same paths
    yield s
    s.close()


def _cache_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_download_with_the_right_hash_is_cached_and_not_fetched_again(server, tmp_path):
    body = b"weights " * 1000
    digest = hashlib.sha256(body).hexdigest()
    server.files[f"/models/net-{digest[:8]}.pth"] = (body, {})
    url = f"{TORCHVISION}net-{digest[:8]}.pth"  # torchvision's rule: the file name carries the hash's start
    first = download(url)
    assert first.read_bytes() == body and len(server.requests) == 1
    assert download(url) == first and len(server.requests) == 1  # from the cache
    server.files["/other/net.bin"] = (body, {})
    server.files["/more/net.bin"] = (body + b"!", {})
    other = download(f"{server.url}/other/net.bin#sha256={digest}")
    more = download(f"{server.url}/more/net.bin#sha256={hashlib.sha256(body + b'!').hexdigest()}")
    assert other.read_bytes() == body and more.read_bytes() == body + b"!"  # same file name, two cache entries


def test_a_hub_url_goes_through_huggingface_hub_and_never_through_the_plain_downloader(server, tmp_path):
    # the hub's files are fetched by hf_hub_download (tests/test_hub.py); download() refuses to fetch one itself,
    # so that no hub file is ever kept unverified in jaxnets' own cache
    with pytest.raises(WeightsError, match="huggingface_hub"):
        download(f"{HUGGINGFACE}timm/net/resolve/main/model.safetensors")
    assert server.requests == [] and _cache_files(tmp_path) == []


@pytest.mark.parametrize("how", ["file_name", "fragment", "no_hash", "digits_elsewhere"])
def test_a_download_with_a_wrong_or_missing_hash_is_refused_and_nothing_is_kept(server, tmp_path, how):
    body = b"not the weights you are looking for"
    server.files["/models/net-deadbeef.pth"] = (body, {})
    server.files["/plain.pth"] = (body, {})
    server.files["/x/resnet18-20240101.pth"] = (body, {})
    url = {"file_name": f"{TORCHVISION}net-deadbeef.pth",
           "fragment": f"{server.url}/plain.pth#sha256={'0' * 64}",
           "no_hash": f"{server.url}/plain.pth",
           "digits_elsewhere": f"{server.url}/x/resnet18-20240101.pth"}[how]  # a date, not torchvision's hash
    with pytest.raises(WeightsError, match=r"not the published|publishes no hash"):
        download(url)
    assert _cache_files(tmp_path) == []
    if how in ("no_hash", "digits_elsewhere"):
        assert server.requests == []  # refused before anything was downloaded


def test_catalogue_names_download_from_their_official_paths_through_a_mirror(server, tmp_path):
    reference = _torch_model("resnet18", seed=2)
    body = _save(reference, tmp_path / "w.safetensors").read_bytes()
    hub = HubServer()  # timm's files come through huggingface_hub, from HF_ENDPOINT, into HF_HOME
    try:
        hub.files["timm/resnet18.a1_in1k/resolve/main/model.safetensors"] = HubFile(body)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, "HF_ENDPOINT": hub.url,
               "HF_HOME": str(tmp_path / "hf")}
        made = subprocess.run([sys.executable, "-m", "jaxnets", "convert", "--from", "timm:resnet18.a1_in1k",
                               "--out", str(tmp_path / "converted")], capture_output=True, text=True, env=env)
        assert made.returncode == 0, made.stderr
    finally:
        hub.close()
    out = tmp_path / "converted"
    card = json.loads((out / "checkpoints" / "model_card.json").read_text())
    assert card["model"] == "resnet18" and card["preprocess"]["crop_pct"] == 0.95 and card["classes"][0] == "tench"
    x = _torchvision_normalised(_pixels(1, 64))
    predictor = Predictor.from_checkpoint(out)
    theirs = _torch_logits(reference, x)
    ours = np.asarray(predictor.model.apply(predictor.variables, x))
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    # torchvision's published hash is in its file name: a file that does not match it is refused, not cached
    server.files["/models/resnet18-f37072fd.pth"] = (body, {})
    with pytest.raises(WeightsError, match="f37072fd"):
        convert("torchvision:resnet18", None, tmp_path / "tv")
    assert [n for n in _cache_files(tmp_path) if "f37072fd" in n] == [] and not (tmp_path / "tv").exists()


# ------------------------------------------------------------------------------------------------ fine-tuning

def _photo_folder(root: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(rng.normal(0, 30, (40, 40, 3)) + colour, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _jaxnets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxnets", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A ResNet-18 from torchvision (random weights, real BN statistics) converted into a jaxnets checkpoint."""
    root = tmp_path_factory.mktemp("converted")
    return convert(str(_save(_torch_model("resnet18", seed=4), root / "w.pth")), "resnet18", root / "converted")


def _same(a, b) -> bool:
    import jax

    return jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.mark.slow
def test_a_frozen_first_epoch_keeps_the_backbone_bit_identical_then_the_whole_network_trains(tmp_path, converted):
    import jax

    data, run = _photo_folder(tmp_path / "photos"), tmp_path / "run"
    common = ["--model", "resnet18", "--data", str(data), "--size", "32", "--out", str(run), "--quiet"]
    done = _jaxnets("train", *common, "--pretrained", str(converted), "--freeze-epochs", "1", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    imported = Predictor.from_checkpoint(converted).variables
    fresh_head = init_variables(create_model("resnet18", 1), (32, 32, 3), 0)["params"]["fc"]

    def compare(step: int) -> tuple[bool, bool, bool]:
        trained = Predictor.from_checkpoint(run, which=step).variables
        body = [(k, v) for k, v in trained["params"].items() if k != "fc"]
        params_same = all(jax.tree.all(jax.tree.map(np.array_equal, v, imported["params"][k])) for k, v in body)
        stats_same = jax.tree.all(jax.tree.map(np.array_equal, trained["batch_stats"], imported["batch_stats"]))
        head_same = jax.tree.all(jax.tree.map(np.array_equal, trained["params"]["fc"], fresh_head))
        return params_same, stats_same, head_same

    assert compare(1) == (True, True, False)  # epoch 1: backbone and its statistics as imported, head trained
    done = _jaxnets("train", "--out", str(run), "--resume", "--epochs", "2", "--quiet")  # across the phase change
    assert done.returncode == 0, done.stderr
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdecimal())
    params_same, stats_same, _ = compare(max(steps))
    assert max(steps) == 2 and not params_same and not stats_same
    card = json.loads((run / "checkpoints" / "model_card.json").read_text())
    config = card["train_config"]
    assert config["pretrained"] == str(converted) and config["optim"]["optimizer"] == "adamw"  # the recipe


@pytest.mark.slow
def test_a_backbone_multiplier_of_zero_trains_the_head_alone_in_every_epoch(tmp_path, converted):
    data, run = _photo_folder(tmp_path / "photos", n=12), tmp_path / "run"
    done = _jaxnets("train", "--model", "resnet18", "--data", str(data), "--size", "32", "--out", str(run), "--quiet",
                    "--pretrained", str(converted), "--freeze-epochs", "0", "--backbone-lr-mult", "0", "--epochs", "2")
    assert done.returncode == 0, done.stderr
    imported = Predictor.from_checkpoint(converted).variables
    trained = Predictor.from_checkpoint(run, which="latest").variables
    assert Predictor.from_checkpoint(run, which="latest").step == 2
    assert _same({k: v for k, v in trained["params"].items() if k != "fc"},
                 {k: v for k, v in imported["params"].items() if k != "fc"})
    assert _same(trained["batch_stats"], imported["batch_stats"])  # inference mode all along: statistics kept


def test_clipping_in_a_fine_tune_is_over_the_global_norm_as_from_scratch():
    from jaxnets.train.optim import FineTune, OptimConfig, finetune_optimizer

    params = {"Conv_0": {"kernel": np.zeros(3, np.float32)}, "Dense_0": {"kernel": np.zeros(4, np.float32)}}
    grads = {"Conv_0": {"kernel": np.array([3.0, 0, 0], np.float32)},
             "Dense_0": {"kernel": np.array([4.0, 0, 0, 0], np.float32)}}  # global norm 5
    tx, _, _ = finetune_optimizer(OptimConfig("sgd", 1.0, clip_norm=1.0), 10, 2, FineTune(0, 1.0))
    updates, _ = tx.update(grads, tx.init(params), params)
    norm = np.sqrt(sum(float(np.sum(np.square(u))) for u in __import__("jax").tree.leaves(updates)))
    assert norm == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], [-0.8, 0, 0, 0], rtol=1e-5)


@pytest.mark.parametrize("args, says", [
    (["--model", "lenet5", "--pretrained", "torchvision:resnet18"], "no PyTorch layout"),
    (["--model", "resnet50", "--pretrained", "torchvision:resnet18"], "resnet18 weights"),
    (["--model", "resnet18", "--pretrained", "nowhere/weights.pth"], "no such file"),
    (["--model", "resnet18", "--freeze-epochs", "2"], "pass --pretrained"),
    (["--model", "resnet18", "--pretrained", "http://127.0.0.1:9/weights.pth"], "publishes no hash"),
])
def test_pretrained_mistakes_are_one_line_before_anything_is_read(tmp_path, args, says):
    done = _jaxnets("train", "--data", "digits", "--out", str(tmp_path / "r"), *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert not (tmp_path / "r").exists()


def test_a_converted_checkpoint_is_not_a_run_to_resume_or_overwrite(tmp_path, converted):
    import shutil

    copy = Path(shutil.copytree(converted, tmp_path / "converted"))
    for extra in (["--resume"], ["--overwrite"], []):
        done = _jaxnets("train", "--model", "resnet18", "--data", "digits", "--out", str(copy), *extra)
        assert done.returncode == 2 and "jaxnets convert" in done.stderr and f"--pretrained {copy}" in done.stderr


def test_convert_refuses_garbage_and_a_used_folder_in_one_line(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"\x80\x04 this is not a state dict")
    done = _jaxnets("convert", "--from", str(garbage), "--model", "resnet18", "--out", str(tmp_path / "a"))
    assert done.returncode == 2 and "can be read without running code" in done.stderr and not (tmp_path / "a").exists()
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"{}")
    done = _jaxnets("convert", "--from", str(bad), "--model", "resnet18", "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "safetensors" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    wrapped = tmp_path / "wrapped.pth"
    import torch

    torch.save({"model": torch.zeros(3)}, wrapped)  # "model" holding a tensor, not a state dict
    done = _jaxnets("convert", "--from", str(wrapped), "--model", "resnet18", "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "fc.weight" in done.stderr
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    done = _jaxnets("convert", "--from", "torchvision:resnet18", "--out", str(used))
    assert done.returncode == 2 and "not an empty folder" in done.stderr and (used / "notes.txt").read_text() == "mine"


def test_reading_a_pth_without_torch_says_how_to_install_it(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"PK\x03\x04")
    code = ("import sys; sys.modules['torch'] = None; from jaxnets.cli import main; "
            f"sys.exit(main(['convert', '--from', {str(weights)!r}, '--model', 'resnet18', '--out', 'x']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "pip install torch" in done.stderr and ".safetensors" in done.stderr
