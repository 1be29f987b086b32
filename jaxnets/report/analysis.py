"""What a report says about a model on labelled data: per-image losses, the confusion matrix, per-class scores,
the most-confused pairs and the images with the highest loss. Pure numpy over the probabilities the caller
computed (inference/report.py scores them through the Predictor, so the report shows what a user of the
checkpoint gets: the same preprocessing as every prediction, no training-time smoothing)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Analysis", "per_class_report"]


def per_class_report(confusion: np.ndarray, classes: list[str]) -> dict:
    """{class: precision, recall, F1, support} from a confusion matrix [true, predicted]."""
    confusion = np.asarray(confusion, dtype=np.float64)
    report = {}
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    return report


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
