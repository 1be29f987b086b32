"""A report's model work, done here on the inference floor: every readable image of a labelled dataset scored
through the Predictor (`analyse`), the top losses decoded again and explained (`report_files`), then handed
to report/ (pure numpy → bytes, no model) to become report.html and its figures. Training and `jaxnets
evaluate` both call `report_files`, so the report shows what a user of the checkpoint gets."""

from __future__ import annotations

import numpy as np

from ..data.dataset import Dataset
from ..data.preprocess import ImageError
from ..report.analysis import Analysis
from ..report.html import Gallery, ReportContext, build_report
from .predictor import Predictor

__all__ = ["analyse", "gallery", "report_files"]

CHUNK = 256  # images decoded at once: the report streams over data of any size


def _describe(ds: Dataset, i: int) -> str:
    source = ds.sources[i]
    return f"#{i}" if isinstance(source, np.ndarray) else str(source)


def analyse(predictor: Predictor, ds: Dataset) -> Analysis:
    """Score every readable image of `ds` (whose labels are in the predictor's class order); unreadable files are
    skipped and listed, never fatal."""
    indices, sources, log_probs, skipped = [], [], [], list(ds.skipped)
    for start in range(0, len(ds), CHUNK):
        pixels, rows = [], []
        for i in range(start, min(start + CHUNK, len(ds))):
            try:
                pixels.append(ds.pixels(i, predictor.spec))
            except ImageError as err:
                skipped.append((_describe(ds, i), str(err)))
                continue
            rows.append(i)
        if rows:
            log_probs.append(predictor.log_probabilities_pixels(np.stack(pixels)))
            indices += rows
            sources += [_describe(ds, i) for i in rows]
    k = len(predictor.classes)
    log_p = np.concatenate(log_probs) if log_probs else np.zeros((0, k), np.float32)
    idx = np.asarray(indices, np.int64)
    labels = ds.labels[idx].astype(np.int32)
    losses = -log_p[np.arange(len(idx)), labels] if len(idx) else np.zeros(0, np.float32)
    return Analysis(list(predictor.classes), idx, sources, labels, np.exp(log_p).astype(np.float32),
                    losses.astype(np.float32), skipped)


def gallery(predictor: Predictor, analysis: Analysis, ds: Dataset, top: int, cams: int) -> Gallery:
    """The rows of the `top` highest losses and their pixels, decoded again from `ds` (the dataset `analysis`
    scored; a file that changed since and no longer decodes is left out), the first `cams` of them explained."""
    rows, images = [], []
    for row in analysis.top_losses(top):
        try:
            images.append(ds.pixels(int(analysis.indices[row]), predictor.spec))
        except ImageError:
            continue
        rows.append(row)
    explain = images[:cams]
    if explain:
        maps, explained = predictor.explain_pixels(np.stack(explain))
    else:
        maps, explained = np.zeros((0, 1, 1), np.float32), np.zeros(0, np.int64)
    return Gallery(np.asarray(rows, np.int64), images, np.asarray(maps), np.asarray(explained))


def report_files(predictor: Predictor, ds: Dataset, context: ReportContext, curves: bytes | None = None
                 ) -> dict[str, bytes]:
    """{"report.html": page, "confusion.png": …, "top_losses.png": …} for the predictor on `ds`."""
    analysis = analyse(predictor, ds)
    return build_report(analysis, gallery(predictor, analysis, ds, context.top, context.cams), context, curves)
