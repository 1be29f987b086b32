"""Evaluate a saved checkpoint on labelled data, matching classes by name: on the run's own data, exactly
the test split it recorded (split.json); on data it never saw, all of it (or the test split it ships)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import Dataset
from ..data.loader import Loader
from ..data.record import is_training_data, read_record, replay_test_split
from ..data.sources import load_dataset
from ..integrity import find_checkpoint_dir
from .metrics import per_class_report
from .predictor import restore_model
from .scoring import make_eval_step, score


def _remap(ds: Dataset, classes: list[str]) -> Dataset:
    """Relabel a dataset into the checkpoint's class order; a class the checkpoint doesn't know is an error."""
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise ValueError(f"the data has class(es) {unknown} that the checkpoint does not know; it knows {classes}")
    mapping = [classes.index(c) for c in ds.classes]
    return Dataset(classes, ds.sources, [mapping[y] for y in ds.labels], ds.skipped, ds.name)


def _whole(data: str, classes: list[str], data_dir: str | None) -> Dataset:
    """Data a run never saw: its own test split when it ships one (IDX test files, a test/ folder, a TFDS test
    split), else all of it."""
    splits = load_dataset(data, val_split=0.0, test_split=0.0, labels=classes, data_dir=data_dir,
                          for_training=False)
    if len(splits.test):
        return splits.test
    train, val = splits.train, splits.val
    if not len(val):
        return train
    sources = (np.concatenate([train.sources, val.sources]) if isinstance(train.sources, np.ndarray)
               else [*train.sources, *val.sources])
    return Dataset(train.classes, sources, np.concatenate([train.labels, val.labels]), train.skipped, train.name)


def run_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The split record of the run a checkpoint belongs to (None for a packaged model or an older run)."""
    directory = find_checkpoint_dir(checkpoint)
    path = (directory.parent if directory.name == "checkpoints" else directory) / "split.json"
    if path.is_symlink() or not path.is_file():
        return None
    return read_record(path)


def evaluation_set(data: str, classes: list[str], record: dict[str, Any] | None = None,
                   data_dir: str | None = None) -> tuple[Dataset, str]:
    """(dataset, what it is): the run's own test split, rebuilt exactly, when `data` is what it trained on;
    data it never saw otherwise (see `_whole`). Classes are matched by name."""
    if record is not None and is_training_data(record, data):
        return _remap(replay_test_split(record, data), classes), "the run's test split"
    return _remap(_whole(data, classes, data_dir or (record or {}).get("data_dir")), classes), "data the run never saw"


def evaluate_checkpoint(checkpoint: str | Path, data: str, batch_size: int = 64, which: str = "best",
                        data_dir: str | None = None) -> dict[str, Any]:
    """The `test` part of metrics.json for this checkpoint on this data."""
    model, variables, card, _ = restore_model(checkpoint, which)
    classes = list(card.classes)
    ds, what = evaluation_set(data, classes, run_record(checkpoint), data_dir)
    loader = Loader(ds, card.preprocess, batch_size)
    result = score(make_eval_step(model, card.preprocess, len(classes), card.binary), variables, loader.epoch(0))
    return {
        "accuracy": result["accuracy"], "loss": result["loss"],
        "confusion_matrix": result["confusion"].astype(int).tolist(),
        "per_class": per_class_report(result["confusion"], classes),
        "images": len(loader), "scored": what, "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
    }
