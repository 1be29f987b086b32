"""report.html: one self-contained page (every image embedded as a data: URI, no script, no external file or
font) that opens offline in any browser — the curves, the confusion matrix, per-class scores, the most-confused
pairs, the top-losses gallery and Grad-CAM over a few of them. `build_report` returns the page and the figures
as bytes by file name; the caller decides where they go (nothing here touches files). Everything a model
computes (the probabilities, the gallery's pixels, the maps) comes in from the caller (inference/report.py):
this floor never runs a model."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape

import numpy as np

from .analysis import Analysis
from .figures import confusion_png, grid_png, image_png
from .overlay import overlay

__all__ = ["Gallery", "ReportContext", "build_report"]

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;
padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;border-bottom:1px solid #dde;padding-bottom:.2rem;
margin-top:2rem}table{border-collapse:collapse}td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;
text-align:right}th:first-child,td:first-child{text-align:left}.summary span{margin-right:1.6rem}
.gallery{display:flex;flex-wrap:wrap;gap:.8rem}figure{margin:0;width:150px;font-size:.75rem}
figure img{width:140px;height:140px;object-fit:contain;image-rendering:pixelated;background:#f3f3f6}
.wrong{color:#b3261e}img.figure{max-width:100%}.note{color:#667;font-size:.85rem}
"""


@dataclass(frozen=True)
class ReportContext:
    """What the page says about where the numbers come from."""

    title: str
    scored: str  # e.g. "the run's test split (1,000 images)"
    checkpoint: str = ""  # e.g. "best (epoch 7)"
    top: int = 16  # images in the top-losses gallery
    cams: int = 6  # of them with Grad-CAM


@dataclass(frozen=True)
class Gallery:
    """The top losses the page shows: their rows (into the analysis, highest loss first), their pixels (uint8
    HWC), and for the first `len(maps)` of them a map of where the model looked and the class it explains."""

    rows: np.ndarray  # int64 [n]
    images: list[np.ndarray]
    maps: np.ndarray  # float [m, H, W], m <= n
    explained: np.ndarray  # int [m]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "") -> str:
    extra = f' class="{cls}"' if cls else ""
    return f'<img{extra} alt="{escape(alt)}" src="{_data_uri(png)}">'


def _per_class_table(analysis: Analysis) -> str:
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{r['precision']:.4f}</td><td>{r['recall']:.4f}</td><td>{r['f1']:.4f}</td>"
        f"<td>{r['support']}</td></tr>" for name, r in analysis.per_class().items())
    return ("<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _confused_table(analysis: Analysis) -> str:
    pairs = analysis.most_confused()
    if not pairs:
        return '<p class="note">No image was misclassified.</p>'
    rows = "".join(f"<tr><td>{escape(t)}</td><td>{escape(p)}</td><td>{n}</td></tr>" for t, p, n in pairs)
    head = "<thead><tr><th>true</th><th>predicted as</th><th>images</th></tr></thead>"
    return f"<table>{head}<tbody>{rows}</tbody></table>"


def _gallery(analysis: Analysis, rows: np.ndarray, images: list[np.ndarray]) -> str:
    figures = []
    for rank, (row, pixels) in enumerate(zip(rows, images, strict=True), 1):
        true, predicted = analysis.classes[analysis.labels[row]], analysis.classes[analysis.predictions[row]]
        prob = float(analysis.probabilities[row, analysis.predictions[row]])
        attrs = (f'data-rank="{rank}" data-index="{int(analysis.indices[row])}" '
                 f'data-source="{escape(analysis.sources[row])}" data-loss="{float(analysis.losses[row]):.6g}" '
                 f'data-true="{escape(true)}" data-predicted="{escape(predicted)}" data-probability="{prob:.6g}"')
        wrong = ' class="wrong"' if true != predicted else ""
        figures.append(f'<figure class="loss" {attrs}>{_img(image_png(pixels), analysis.sources[row])}<figcaption>'
                       f"true <b>{escape(true)}</b><br><span{wrong}>predicted <b>{escape(predicted)}</b> "
                       f"({prob:.1%})</span><br>loss {float(analysis.losses[row]):.3f}</figcaption></figure>")
    return f'<div class="gallery">{"".join(figures)}</div>'


def _cams(analysis: Analysis, gallery: Gallery) -> str:
    if not len(gallery.maps):
        return '<p class="note">No images.</p>'
    figures, m = [], len(gallery.maps)
    for row, pixels, heat, cls in zip(gallery.rows[:m], gallery.images[:m], gallery.maps, gallery.explained,
                                      strict=True):
        name = analysis.classes[int(cls)]
        figures.append(f'<figure class="cam" data-index="{int(analysis.indices[row])}" data-class="{escape(name)}">'
                       f"{_img(image_png(overlay(pixels, heat)), 'map for ' + name)}<figcaption>why "
                       f"<b>{escape(name)}</b><br>{escape(analysis.sources[row][-40:])}</figcaption></figure>")
    return f'<div class="gallery">{"".join(figures)}</div>'


def _skipped(analysis: Analysis) -> str:
    if not analysis.skipped:
        return ""
    items = "".join(f"<li>{escape(p)}: {escape(r)}</li>" for p, r in analysis.skipped[:200])
    more = f"<p class='note'>and {len(analysis.skipped) - 200} more</p>" if len(analysis.skipped) > 200 else ""
    return f'<section id="skipped"><h2>Skipped files ({len(analysis.skipped)})</h2><ul>{items}</ul>{more}</section>'


def build_report(analysis: Analysis, gallery: Gallery, context: ReportContext,
                 curves: bytes | None = None) -> dict[str, bytes]:
    """{"report.html": page, "confusion.png": …, "top_losses.png": …} from the analysis of the scored data and
    the gallery of its top losses (at most `context.top` of them, `context.cams` with maps)."""
    rows, images = gallery.rows, gallery.images
    confusion = confusion_png(analysis.confusion, analysis.classes)
    titles = [f"{analysis.classes[analysis.labels[r]]} → {analysis.classes[analysis.predictions[r]]}\n"
              f"loss {analysis.losses[r]:.2f}" for r in rows]
    grid = grid_png(images, titles)
    cams = _cams(analysis, gallery)
    curves_html = _img(curves, "training curves", "figure") if curves else \
        '<p class="note">No training history next to this checkpoint.</p>'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(context.title)}</title><style>{STYLE}</style></head><body>
<h1>{escape(context.title)}</h1>
<section id="summary" class="summary"><span>accuracy <b>{analysis.accuracy:.4f}</b></span>
<span>loss <b>{analysis.loss:.4f}</b></span><span>{len(analysis.labels)} images: {escape(context.scored)}</span>
<span>{escape(context.checkpoint)}</span></section>
<section id="curves"><h2>Training curves</h2>{curves_html}</section>
<section id="confusion"><h2>Confusion matrix</h2>{_img(confusion, "confusion matrix", "figure")}</section>
<section id="per-class"><h2>Per class</h2>{_per_class_table(analysis)}</section>
<section id="most-confused"><h2>Most confused</h2>{_confused_table(analysis)}</section>
<section id="top-losses"><h2>Top losses</h2><p class="note">The {len(rows)} images with the highest loss
(−log of the probability of the true class).</p>{_gallery(analysis, rows, images)}</section>
<section id="grad-cam"><h2>Where the model looked</h2><p class="note">Maps for the predicted class of the first
{len(gallery.maps)} top losses (Grad-CAM for CNNs, gradient × input for MLPs).</p>{cams}</section>
{_skipped(analysis)}
<footer class="note">Made by jaxnets. Self-contained: no script, no external file.</footer>
</body></html>
"""
    # file names that are not UTF-8 (held by Python as surrogates) are written as escapes, not a crash
    return {"report.html": page.encode("utf-8", "backslashreplace"), "confusion.png": confusion,
            "top_losses.png": grid}
