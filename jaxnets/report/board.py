"""TensorBoard event files of a run, through tensorboardX (no TensorFlow needed): per epoch the losses,
accuracies, learning rate and images/s; at the end the test confusion matrix as an image.
`tensorboard --logdir runs` shows every run under runs/ side by side (each start of a run as its own curve)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SCALARS = {  # history key → TensorBoard tag (train and validation on one chart)
    "train_loss": "loss/train", "val_loss": "loss/validation",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/validation",
    "lr": "learning_rate", "images_per_s": "images_per_s",
}
LOGDIR = "tensorboard"  # inside the run directory


def start_dir(base: Path, resume: bool) -> Path:
    """Each start of a run logs into its own sub-folder (`tensorboard/start-<UTC time>`), which a resume goes on
    writing into: an `--overwrite` never mixes its curves with the old ones, and never deletes them."""
    starts = sorted(p for p in base.glob("start-*") if p.is_dir() and not p.is_symlink()) if base.is_dir() else []
    if resume and starts:
        return starts[-1]
    return base / time.strftime("start-%Y%m%d-%H%M%S", time.gmtime())


class Board:
    """One run's event writer: `epoch(row)` after each epoch, `confusion(...)` once at the end."""

    def __init__(self, run_dir: str | Path, resume: bool = False):
        from tensorboardX import SummaryWriter

        self.logdir = start_dir(Path(run_dir) / LOGDIR, resume)
        # tensorboardX names its file by the second and the host: a resume within the same second would
        # truncate the file before it; the suffix keeps every writer's file its own
        self.writer = SummaryWriter(str(self.logdir), filename_suffix=f".{os.getpid()}.{time.time_ns()}")

    def epoch(self, row: dict[str, float]) -> None:
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), int(row["epoch"]))
        self.writer.flush()

    def confusion(self, matrix: np.ndarray, classes: list[str], epoch: int) -> None:
        from .figures import confusion_figure, has_figures  # the report's figure: one heatmap for both

        if not has_figures():  # the scalars are written; the image needs matplotlib (the [report] extra)
            return

        self.writer.add_figure("test/confusion_matrix", confusion_figure(matrix, classes), epoch, close=True)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
