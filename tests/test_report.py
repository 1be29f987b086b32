"""report.html (report/): written by every run and by `jaxnets evaluate --report`; self-contained; its gallery is
exactly the highest-loss test images (losses recomputed here, from the model, without the report's code); every
embedded image decodes; it loads in a real headless Chromium without page errors."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SECTIONS = ("summary", "curves", "confusion", "per-class", "most-confused", "top-losses", "grad-cam")


class _Page(HTMLParser):
    """The parts of a report a reader sees: section ids, images, gallery figures (with their data- attributes)
    and anything that would reach outside the file."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.losses, self.cams, self.outside, self.scripts = [], [], [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a["src"])
        if tag == "figure" and a.get("class") == "loss":
            self.losses.append(a)
        if tag == "figure" and a.get("class") == "cam":
            self.cams.append(a)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.outside.append(a[key])


def _read(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _digits_at_32(two_classes: bool):
    """The scikit-learn digits enlarged (nearest) to LeNet's 32×32: the model sees exactly these pixels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(np.clip(np.rint(d.images * (255 / 16)), 0, 255), np.ones((4, 4))).astype(np.uint8)[..., None]
    labels = d.target
    if two_classes:
        keep = labels < 2
        images, labels = images[keep], labels[keep]
    return images, labels


@pytest.fixture(scope="module", params=["ten_classes", "binary"])
def run(request, tmp_path_factory):
    from jaxnets.data.dataset import Splits
    from jaxnets.data.sources import from_arrays
    from jaxnets.train import TrainConfig, fit

    images, labels = _digits_at_32(request.param == "binary")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    test, val, train = order[:150], order[150:250], order[250:]
    names = [str(i) for i in range(int(labels.max()) + 1)]
    parts = [from_arrays(images[i], labels[i], names) for i in (train, val, test)]
    out = tmp_path_factory.mktemp("report") / "run"
    fit(TrainConfig(model="lenet5", data="arrays", epochs=2, out=str(out), quiet=True, tensorboard=False),
        Splits(*parts))
    return out, images[test], labels[test]


def _independent_losses(out: Path, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p(true class) straight from the restored variables and the card's normalisation."""
    from jaxnets.inference.predictor import restore_model

    model, variables, card, _ = restore_model(out)
    mean, std = (np.asarray(v, np.float32) for v in card.preprocess.mean_std())
    logits = np.asarray(model.apply(variables, (images.astype(np.float32) / 255 - mean) / std), np.float64)
    if card.binary:
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)  # sigmoid(z) = softmax([0, z])
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(
        1, keepdims=True)
    return -log_p[np.arange(len(labels)), labels]


def test_every_run_writes_a_self_contained_report_with_every_section(run):
    out, _, _ = run
    for name in ("confusion.png", "top_losses.png", "curves.png"):
        Image.open(out / name).verify()  # the figures are also files, and they decode
    page = _read(out / "report.html")
    assert page.sections[:len(SECTIONS)] == list(SECTIONS)
    assert page.scripts == 0 and page.outside == []
    assert len(page.images) >= 2 + 16 + 6  # curves, confusion, the gallery, the Grad-CAM overlays
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.load()
        assert min(image.size) >= 32


def test_the_gallery_shows_exactly_the_highest_loss_test_images(run):
    out, images, labels = run
    page = _read(out / "report.html")
    losses = _independent_losses(out, images, labels)
    expected = np.argsort(-losses, kind="stable")[:16]
    shown = [int(f["data-index"]) for f in page.losses]
    assert len(shown) == 16
    # the same images in the same order (allowing swaps between losses equal to float32 precision)
    np.testing.assert_allclose(np.sort(losses[shown])[::-1], losses[expected], rtol=1e-4, atol=1e-5)
    assert set(shown) == set(expected.tolist()) or np.isclose(losses[shown].min(), losses[expected].min(), rtol=1e-4)
    for figure in page.losses:
        i = int(figure["data-index"])
        assert figure["data-true"] == str(labels[i])
        assert float(figure["data-loss"]) == pytest.approx(losses[i], rel=1e-4, abs=1e-5)
    assert [c["data-index"] for c in page.cams] == [f["data-index"] for f in page.losses[:6]]
    assert [c["data-class"] for c in page.cams] == [f["data-predicted"] for f in page.losses[:6]]


def test_the_report_loads_in_headless_chromium_without_page_errors(run):
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser_path, "the browser tests need Debian's chromium package: apt-get install chromium"
    out, _, _ = run
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto((out / "report.html").as_uri())
            page.wait_for_load_state("load")
            drawn = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            assert errors == []
            assert drawn and all(drawn)
            assert page.locator("#top-losses figure").count() == 16
        finally:
            browser.close()


def test_evaluate_reports_on_new_photos_skips_a_broken_one_and_never_writes_over_files(run, tmp_path):
    """A folder of real PNGs with one broken file: the report scores the readable ones and names the broken one;
    a second report into the same folder is refused in one line and the first one is left as it was."""
    out, images, labels = run
    data = tmp_path / "photos"
    for k in range(2):
        (data / str(k)).mkdir(parents=True)
        for j in np.flatnonzero(labels == k)[:5]:
            Image.fromarray(images[j, ..., 0]).save(data / str(k) / f"{j}.png")
    (data / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a picture")
    folder = tmp_path / "eval"
    cmd = [sys.executable, "-m", "jaxnets", "evaluate", "--checkpoint", str(out), "--data", str(data), "--json",
           "--report", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["images"] == 10
    page = _read(folder / "report.html")
    assert page.sections[:len(SECTIONS)] == list(SECTIONS) and len(page.losses) == 10
    text = (folder / "report.html").read_text()
    assert "10 images" in text and 'id="skipped"' in text and "broken.png" in text
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "does not overwrite" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_run_without_a_report_writes_none(tmp_path):
    from jaxnets.train import TrainConfig, fit

    fit(TrainConfig(model="logistic_regression", data="digits", epochs=1, out=str(tmp_path / "r"), quiet=True,
                    tensorboard=False, report=False))
    assert not (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "metrics.json").exists()


def test_hostile_class_names_are_shown_as_text_not_markup(tmp_path):
    """Class names come from folder names: markup, quotes and "$" (matplotlib's mathtext) are shown as written."""
    from jaxnets.data.dataset import Splits
    from jaxnets.data.sources import from_arrays
    from jaxnets.train import TrainConfig, fit

    names = ['"><img src=x onerror=alert(1)>', "US$ & co", "$\\q$"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (90, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(90) % 3
    parts = [from_arrays(images[a:b], labels[a:b], names) for a, b in ((0, 60), (60, 75), (75, 90))]
    fit(TrainConfig(model="logistic_regression", data="arrays", epochs=1, out=str(tmp_path / "r"), quiet=True,
                    tensorboard=False), Splits(*parts))
    page = _read(tmp_path / "r" / "report.html")
    assert page.scripts == 0 and page.outside == []
    assert all(src.startswith("data:") for src in page.images)  # no <img src=x> came from a class name
    text = (tmp_path / "r" / "report.html").read_text()
    assert names[0] not in text and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "US$ &amp; co" in text
