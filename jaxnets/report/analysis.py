"""What a report says about a model on labelled data: per-image losses, the confusion matrix, per-class scores,
the most-confused pairs and the images with the highest loss — all from the Predictor, so the report shows
what a user of the checkpoint gets (the same preprocessing as every prediction, no training-time smoothing)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.dataset import Dataset
from ..data.preprocess import ImageError
from ..inference.metrics import per_class_report
from ..inference.predictor import Predictor

__all__ = ["Analysis", "analyse"]

CHUNK = 256  # images decoded at once: the report streams over data of any size


@dataclass
class Analysis:
    """Per-image results (in the order of `indices`, the dataset positions that decoded) and their summaries."""

    classes: list[str]
    indices: np.ndarray  # int64 [N]: dataset positions of the scored images
    sources: list[str]  # what each scored image was (a path, or "#i" for an in-memory array)
    labels: np.ndarray  # int32 [N]
    probabilities: np.ndarray  # float32 [N, classes]
    losses: np.ndarray  # float32 [N]: -log p(true class)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean()) if len(self.labels) else 0.0

    @property
    def loss(self) -> float:
        return float(self.losses.mean()) if len(self.losses) else 0.0

    @property
    def confusion(self) -> np.ndarray:
        """int64 [classes, classes]: rows are the true class, columns the predicted one."""
        k = len(self.classes)
        return np.bincount(self.labels * k + self.predictions, minlength=k * k).reshape(k, k)

    def per_class(self) -> dict:
        return per_class_report(self.confusion, self.classes)

    def most_confused(self, top: int = 10) -> list[tuple[str, str, int]]:
        """(true, predicted, count) for the off-diagonal cells with the most images, largest first."""
        confusion = self.confusion.copy()
        np.fill_diagonal(confusion, 0)
        order = np.argsort(-confusion, axis=None, kind="stable")[:top]
        pairs = [np.unravel_index(i, confusion.shape) for i in order]
        return [(self.classes[t], self.classes[p], int(confusion[t, p])) for t, p in pairs if confusion[t, p]]

    def top_losses(self, top: int) -> np.ndarray:
        """Row numbers (into this analysis) of the `top` highest losses, highest first; ties by dataset order."""
        return np.argsort(-self.losses, kind="stable")[:top]


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
