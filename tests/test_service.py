"""The real service: `bentoml serve` in a subprocess, real HTTP, real image files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from imagefiles import bomb_png, palette_with_transparency, truncated_jpeg
from PIL import Image
from serving import running_server

from jaxnets.data import Loader, load_dataset
from jaxnets.inference import Predictor, forward, probabilities
from jaxnets.train import OptimConfig, TrainConfig, fit

pytestmark = pytest.mark.slow
MAX_REQUEST = 2_000_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    result = fit(TrainConfig(model="lenet5", data="digits", epochs=12, batch_size=32, augment="light",
                             optim=OptimConfig(lr=2e-3, schedule="cosine"), out=str(root / "run"), quiet=True))
    home = root / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    pkg = subprocess.run([sys.executable, "-m", "jaxnets", "package", "--checkpoint", str(result.out)],
                         capture_output=True, text=True, env=env)
    assert pkg.returncode == 0, pkg.stderr
    tag = pkg.stdout.strip().splitlines()[-1]
    assert tag.startswith("jaxnets-classifier:")
    test = load_dataset("digits").test
    images = root / "digits"
    images.mkdir()
    paths = []
    for i in range(len(test)):
        paths.append(images / f"{i}_label{test.labels[i]}.png")
        Image.fromarray(test.sources[i]).save(paths[-1])
    return {"root": root, "home": home, "run": result.out, "tag": tag, "paths": paths, "labels": test.labels,
            "test": test}


@pytest.fixture(scope="module")
def server(trained):
    with running_server(trained["home"], trained["root"] / "server.log",
                        JAXNETS_MAX_REQUEST_BYTES=str(MAX_REQUEST)) as url:
        yield url


def _post(url, route, files, **kwargs):
    return requests.post(f"{url}{route}", files=files, timeout=60, **kwargs)


def _one(url, data: bytes, name="image.png", field="image"):
    return _post(url, "/predict", {field: (name, data)})


def test_predicts_real_digits_correctly(server, trained):
    answers = [_one(server, p.read_bytes()).json() for p in trained["paths"][:40]]
    correct = sum(a["label"] == str(y) for a, y in zip(answers, trained["labels"][:40], strict=True))
    assert correct >= 37
    assert set(answers[0]) == {"label", "probabilities", "top_k"}
    assert len(answers[0]["probabilities"]) == 10 and answers[0]["top_k"][0]["label"] == answers[0]["label"]


def test_batch_endpoint_answers_each_image_in_order(server, trained):
    paths = trained["paths"][:12]
    r = _post(server, "/predict_batch", [("images", (p.name, p.read_bytes())) for p in paths])
    assert r.status_code == 200, r.text
    singles = [_one(server, p.read_bytes()).json()["label"] for p in paths]
    assert [a["label"] for a in r.json()] == singles


def test_service_equals_predictor_equals_the_eval_forward(server, trained):
    predictor = Predictor.from_checkpoint(trained["run"])
    test = trained["test"]
    batch = next(Loader(test, predictor.spec, 32).epoch(0))
    eval_probs = np.asarray(probabilities(forward(predictor.model, predictor.spec)(predictor.variables,
                                                                                   batch["image"]), False))
    pred_probs = predictor.predict_pixels(np.asarray(batch["image"]))
    np.testing.assert_allclose(pred_probs, eval_probs, atol=1e-5)
    from_files = np.asarray([[r["probabilities"][c] for c in predictor.classes]
                             for r in predictor.predict([str(p) for p in trained["paths"][:32]])])
    np.testing.assert_allclose(from_files, eval_probs, atol=1e-5)
    r = _post(server, "/predict_batch", [("images", (p.name, p.read_bytes())) for p in trained["paths"][:32]])
    served = np.asarray([[a["probabilities"][c] for c in predictor.classes] for a in r.json()])
    np.testing.assert_allclose(served, eval_probs, atol=1e-5)


def _bad_inputs(tmp: Path) -> dict[str, tuple]:
    truncated = truncated_jpeg(tmp / "cut.jpg").read_bytes()
    bomb = bomb_png(tmp / "bomb.png").read_bytes()
    return {
        "non-image bytes": ("/predict", {"image": ("x.bin", os.urandom(2000))}),
        "text named .jpg": ("/predict", {"image": ("notes.jpg", b"this is not a picture")}),
        "empty upload": ("/predict", {"image": ("empty.png", b"")}),
        "truncated jpeg": ("/predict", {"image": ("cut.jpg", truncated)}),
        "decompression bomb": ("/predict", {"image": ("bomb.png", bomb)}),
        "request too large": ("/predict", {"image": ("big.png", b"\0" * (MAX_REQUEST + 1000))}),
        "wrong field name": ("/predict", {"picture": ("d.png", b"\x89PNG\r\n\x1a\n" + os.urandom(100))}),
        "batch with one bad file": ("/predict_batch", [("images", ("a.png", b"junk")), ("images", ("b.png", b""))]),
        "batch wrong field": ("/predict_batch", {"image": ("d.png", b"\x89PNG")}),
    }


def test_bad_input_gets_4xx_with_a_message_and_the_server_keeps_serving(server, trained, tmp_path):
    good = trained["paths"][0].read_bytes()
    for what, (route, files) in _bad_inputs(tmp_path).items():
        r = _post(server, route, files)
        assert r.status_code in (400, 413), (what, r.status_code, r.text)
        body = r.json()
        message = body[0]["error"] if isinstance(body, list) else body["error"]
        assert isinstance(message, str) and message, what
        after = _one(server, good)
        assert after.status_code == 200, (what, after.text)
    assert "pixels" in _post(server, "/predict", _bad_inputs(tmp_path)["decompression bomb"][1]).text


def test_unusual_image_modes_are_converted_not_refused(server, trained):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[5:15, 8:12] = 255
    images = {
        "cmyk.jpg": ("CMYK", Image.fromarray(rgb).convert("CMYK")),
        "grey16.png": ("I;16", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)),
        "grey.png": ("L", Image.fromarray(rgb[..., 0])),
        "rgba.png": ("RGBA", Image.fromarray(np.dstack([rgb, np.full((20, 20), 200, np.uint8)]), "RGBA")),
    }
    cases = {}
    for name, (_, img) in images.items():
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if name.endswith(".jpg") else "PNG")
        cases[name] = buf.getvalue()
    buf = io.BytesIO()
    palette_with_transparency(rgb, buf)
    cases["palette_alpha.png"] = buf.getvalue()
    expected_modes = {**{k: m for k, (m, _) in images.items()}, "palette_alpha.png": "P"}
    predictor = Predictor.from_checkpoint(trained["run"])
    for name, data in cases.items():
        with Image.open(io.BytesIO(data)) as check:  # each case really is the mode it is named after
            assert check.mode == expected_modes[name], (name, check.mode)
            assert name != "palette_alpha.png" or "transparency" in check.info
        r = _one(server, data, name=name)
        assert r.status_code == 200, (name, r.text)
        want = predictor.predict([data])[0]["probabilities"]  # the same conversion as the one preprocessing path
        got = r.json()["probabilities"]
        assert all(abs(got[c] - want[c]) < 1e-5 for c in want), name


def test_health_and_metrics_endpoints(server):
    assert requests.get(f"{server}/livez", timeout=10).status_code == 200
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200
    metrics = requests.get(f"{server}/metrics", timeout=10)
    assert metrics.status_code == 200 and "request" in metrics.text


def test_200_concurrent_requests_from_16_clients(server, trained):
    predictor = Predictor.from_checkpoint(trained["run"])
    paths = trained["paths"][:50]
    expected = {p: r["label"] for p, r in zip(paths, predictor.predict([str(p) for p in paths]), strict=True)}

    def call(i):
        if i % 2:
            p = paths[i % len(paths)]
            r = _one(server, p.read_bytes())
            ok = r.status_code == 200 and r.json()["label"] == expected[p]
        else:
            chosen = [paths[(i + k) % len(paths)] for k in range(4)]
            r = _post(server, "/predict_batch", [("images", (p.name, p.read_bytes())) for p in chosen])
            ok = r.status_code == 200 and [a["label"] for a in r.json()] == [expected[p] for p in chosen]
        return None if ok else f"{r.request.path_url} {r.status_code} {r.text[:300]}"

    with ThreadPoolExecutor(16) as pool:
        failures = [f for f in pool.map(call, range(200)) if f]
    assert not failures, f"{len(failures)} of 200 failed, first: {failures[0]}"


def test_missing_model_stops_start_up_with_a_clear_log_line(tmp_path):
    with pytest.raises(RuntimeError, match=r"cannot load model 'no-such-model:latest'.*jaxnets package"), \
            running_server(tmp_path / "empty_home", tmp_path / "log.txt", timeout=120,
                           JAXNETS_MODEL_TAG="no-such-model:latest"):
        pass


def test_bentoml_build_from_service_folder_includes_the_model(trained):
    env = {**os.environ, "BENTOML_HOME": str(trained["home"]), "BENTOML_DO_NOT_TRACK": "True"}
    repo = Path(__file__).resolve().parent.parent
    service_dir = repo / "service"
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(service_dir / "wheels"),
                            str(repo)], capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    built = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=service_dir,
                           capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    listed = subprocess.run([sys.executable, "-m", "bentoml", "list", "-o", "json"], capture_output=True, text=True,
                            env=env)
    bentos = json.loads(listed.stdout)
    assert bentos and bentos[0]["tag"].startswith("jaxnets_classifier:")
    info = subprocess.run([sys.executable, "-m", "bentoml", "get", bentos[0]["tag"], "-o", "json"],
                          capture_output=True, text=True, env=env)
    assert trained["tag"] in info.stdout
    bento_dir = trained["home"] / "bentos" / "jaxnets_classifier" / bentos[0]["tag"].split(":")[1]
    assert (bento_dir / "src" / "service.py").is_file()
    assert list((bento_dir / "env" / "python" / "wheels").glob("jaxnets-*.whl"))


def test_the_front_process_imports_no_jax(trained):
    """The front service's worker imports exactly this module and builds JaxnetsClassifier's state from the
    model card; neither may pull in JAX, Flax, optax or orbax (only the model worker runs a model)."""
    code = ("import sys, jaxnets.serving.service as s; from jaxnets.inference.card import read_card; "
            "import bentoml; card = read_card(bentoml.models.get(s.MODEL_TAG).path); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'orbax')); "
            "print(card.model, heavy)")
    env = {**os.environ, "BENTOML_HOME": str(trained["home"]), "BENTOML_DO_NOT_TRACK": "True",
           "JAXNETS_MODEL_TAG": trained["tag"]}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "lenet5 []", out.stdout


# ---------------------------------------------------------------------------------------------- /explain and the page


def _png_from_data_uri(uri: str) -> Image.Image:
    import base64

    assert uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
    image.load()
    return image


def test_explain_answers_the_map_for_the_predicted_or_a_chosen_class(server, trained):
    data = trained["paths"][0].read_bytes()
    predicted = _one(server, data).json()["label"]
    r = _post(server, "/explain", {"image": ("digit.png", data)})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["label"] == predicted and answer["class"] == predicted and 0 < answer["probability"] <= 1
    overlay, heat = _png_from_data_uri(answer["overlay"]), _png_from_data_uri(answer["map"])
    assert overlay.size == heat.size and min(overlay.size) >= 224 and heat.mode == "L"
    other = "3" if predicted != "3" else "4"
    response = _post(server, "/explain", {"image": ("digit.png", data)}, data={"class_name": other})
    assert response.status_code == 200, response.text
    chosen = response.json()
    assert chosen["class"] == other and chosen["label"] == predicted and chosen["map"] != answer["map"]
    # the map is the Predictor's (the one tests/test_explain_pointing.py vets), pixel for pixel
    predictor = Predictor.from_checkpoint(trained["run"])
    pixels = predictor.pixels([data])
    expected, _ = predictor.explain_pixels(pixels, [predictor.classes.index(predicted)])
    factor = heat.size[0] // pixels.shape[2]
    drawn = np.asarray(heat, np.int16)[::factor, ::factor]
    assert np.abs(drawn - np.rint(expected[0] * 255)).max() <= 2


def test_explain_has_the_guards_of_predict(server, trained):
    data = trained["paths"][0].read_bytes()
    cases = [
        (_post(server, "/explain", {"image": ("d.png", data)}, data={"class_name": "cat"}), 400, "class"),
        (_post(server, "/explain", {"image": ("d.png", b"not an image")}), 400, "image"),
        (_post(server, "/explain", {"picture": ("d.png", data)}), 400, "image"),
        (requests.get(f"{server}/explain", timeout=30), 405, "POST"),
        (_post(server, "/explain", {"image": ("big.bin", b"\0" * (MAX_REQUEST + 10))}), 413, "limit"),
    ]
    for response, status, word in cases:
        assert response.status_code == status, response.text
        assert word in response.json()["error"]


def test_the_page_is_self_contained_and_locked_down(server):
    r = requests.get(f"{server}/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp.split(
        "script-src")[1].split(";")[0]
    html = r.text
    assert 'data-testid="label"' in html and "<script src" not in html
    assert "http://" not in html and "https://" not in html and "<link" not in html and "@import" not in html
    assert requests.post(f"{server}/", timeout=30).status_code == 405


def test_the_page_in_a_real_browser_shows_the_label_of_predict(server, trained, tmp_path):
    import shutil

    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser_path, "the browser tests need Debian's chromium package: apt-get install chromium"
    path = trained["paths"][5]
    expected = _one(server, path.read_bytes()).json()["label"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            errors, outside = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda q: outside.append(q.url) if not q.url.startswith((server, "data:", "blob:"))
                    else None)
            page.goto(f"{server}/")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#overlay[src^='data:image/png']", timeout=60_000)
            page.wait_for_load_state("load")
            assert page.locator("#overlay").evaluate("img => img.decode().then(() => img.naturalWidth)") >= 224
            assert page.get_by_test_id("label").inner_text().strip() == expected
            assert page.locator("#bars .bar").count() == 5
            page.screenshot(path=str(tmp_path / "page.png"))
            assert errors == [] and outside == []
        finally:
            browser.close()


def test_predict_equals_the_predictor_for_small_and_large_uploads(server, trained, tmp_path):
    # /predict is answered by the front door's direct route (guard.py): small uploads decode in its event loop,
    # large ones in a thread. Both must give the Predictor's probabilities, and top_k must be honoured.
    predictor = Predictor.from_checkpoint(trained["run"])
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    digit = np.asarray(Image.open(trained["paths"][0]).convert("L").resize((600, 600)), np.int16)
    Image.fromarray(np.clip(digit + rng.integers(-3, 4, digit.shape), 0, 255).astype(np.uint8)).save(big)
    assert big.stat().st_size > 64 * 1024
    paths = [*trained["paths"][:6], big]
    expected = predictor.predict([str(p) for p in paths])
    for path, want in zip(paths, expected, strict=True):
        r = _post(server, "/predict", {"image": (path.name, path.read_bytes())}, data={"top_k": "3"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["label"] == want["label"] and len(got["top_k"]) == 3
        np.testing.assert_allclose([got["probabilities"][c] for c in predictor.classes],
                                   [want["probabilities"][c] for c in predictor.classes], atol=1e-5)
    bad = _post(server, "/predict_batch", [("images", ("a.png", paths[0].read_bytes())),
                                           ("images", ("b.png", b"junk"))])
    assert bad.status_code == 400 and bad.json()["error"].startswith("images[1]: ")
    # these were answered by the front door's direct route: its access-log lines, not BentoML's
    log = (trained["root"] / "server.log").read_text()
    assert "(method=POST,path=/predict) (status=200" in log and "(method=POST,path=/predict_batch) (status=400" in log


def test_bench_serve_measures_the_running_service(server, trained):
    # the load tool behind BENCHMARKS.md's service rows: keep-alive clients on one asyncio loop, warm-up not counted
    from jaxnets.bench import bench_serve

    for batch in (0, 3):
        result = bench_serve(server, 4, 40, str(trained["paths"][0]), batch=batch, warmup=8)
        assert result["errors"] == 0 and result["requests"] == 40 and result["requests_per_s"] > 0
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
        assert result["images_per_s"] == pytest.approx(result["requests_per_s"] * max(batch, 1), rel=0.01)
