"""The report's pictures as PNG bytes: the confusion matrix as a heatmap, images as the model saw them (small
ones enlarged without smoothing), and the top-losses grid. Nothing here touches files."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ..extras import available, require

__all__ = ["NO_FIGURES", "confusion_figure", "confusion_png", "figure_png", "grid_png", "has_figures", "image_png",
           "note_png", "pyplot"]


class _Figures:
    """The two calls of pyplot's that jaxnets' figures use, `subplots` and `close`, on matplotlib's object-oriented
    API: each figure is a `matplotlib.figure.Figure` drawn by its own Agg canvas, so no backend is chosen for the
    process (pyplot is never imported) and a host application's matplotlib set-up stays as it was."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, dpi=None, **kwargs):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    @staticmethod
    def close(fig) -> None:
        """Nothing to release: a figure that no pyplot manager knows is freed with its last reference."""


def pyplot() -> _Figures:
    """`subplots` and `close` as pyplot has them, without pyplot (see `_Figures`): matplotlib is imported on first
    use, and no process-wide backend is set. MissingExtra naming `pip install 'jaxnets[report]'` without it."""
    require("report", "matplotlib")
    return _Figures()


def has_figures() -> bool:
    """Whether the figures can be drawn (matplotlib, the [report] extra, is installed)."""
    return available("matplotlib")


NO_FIGURES = "figure not drawn: matplotlib is not installed (pip install 'jaxnets[report]')"


def note_png(text: str, size: tuple[int, int] = (560, 60)) -> bytes:
    """A small PNG that says `text`: what stands in a report for a figure that could not be drawn."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (250, 250, 250))
    ImageDraw.Draw(image).text((10, size[1] // 2 - 6), text, fill=(60, 60, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def figure_png(fig) -> bytes:
    """A figure as PNG bytes."""
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _plain(text: str) -> str:
    """Text matplotlib shows as it is: a class name with "$" would otherwise be parsed as mathtext (and fail)."""
    return str(text).replace("$", r"\$")


def image_png(pixels: np.ndarray, at_least: int = 112) -> bytes:
    """uint8 H×W×C as PNG, enlarged by a whole factor (nearest) until its shorter side is `at_least`: a 28-pixel
    digit stays sharp and visible."""
    from PIL import Image

    image = pixels[..., 0] if pixels.shape[-1] == 1 else pixels  # one channel stays grey ("L")
    factor = max(1, -(-at_least // min(image.shape[:2])))
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG")
    return out.getvalue()


def confusion_png(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """`confusion_figure` as PNG bytes (a note saying why, without matplotlib)."""
    if not has_figures():
        return note_png(NO_FIGURES)
    return figure_png(confusion_figure(confusion, classes))


def confusion_figure(confusion: np.ndarray, classes: Sequence[str]):
    """Rows true, columns predicted, colour by the share of the true class (so rare classes show), counts
    written in the cells while they stay legible (the report's figure and TensorBoard's image)."""
    plt = pyplot()
    k = len(classes)
    counts = np.asarray(confusion, np.int64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=80)
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:
        labels = [_plain(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0)
        ax.set_yticks(range(k), labels)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if share[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def grid_png(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 8) -> bytes:
    """Images (uint8 H×W×C) in a grid, each with its title: the top-losses figure saved beside the report (a note
    saying why, without matplotlib)."""
    if not has_figures():
        return note_png(NO_FIGURES)
    plt = pyplot()
    n = max(1, len(images))
    rows = -(-n // columns)
    cols = min(columns, n)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.2 * rows), dpi=80, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, pixels, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
        ax.set_title(_plain(title), fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
