"""Evaluate a saved checkpoint on labelled data, matching classes by name: on the run's own data, exactly
the test split it recorded (split.json); on data it never saw, all of it (or the test split it ships)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import Dataset
from ..data.loader import Loader
from ..data.record import is_training_data, read_record, replay_test_split
from ..data.sources import load_dataset
from ..integrity import find_checkpoint_dir
from ..report.analysis import per_class_report
from .predictor import Predictor, restore_model
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


def _run_file(checkpoint: str | Path, name: str) -> Path | None:
    """A file of the run a checkpoint belongs to (None for a packaged model, an older run, or a symlink)."""
    directory = find_checkpoint_dir(checkpoint)
    path = (directory.parent if directory.name == "checkpoints" else directory) / name
    return None if path.is_symlink() or not path.is_file() else path


def run_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The split record of the run a checkpoint belongs to (None for a packaged model or an older run)."""
    path = _run_file(checkpoint, "split.json")
    return None if path is None else read_record(path)


def run_history(checkpoint: str | Path) -> list[dict[str, Any]] | None:
    """The epoch history of the run a checkpoint belongs to, when it has one that reads."""
    path = _run_file(checkpoint, "history.json")
    try:
        history = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    keys = ("epoch", "train_loss", "train_accuracy")
    usable = isinstance(history, list) and history and all(
        isinstance(h, dict) and all(isinstance(h.get(k), (int, float)) for k in keys) for h in history)
    return history if usable else None


def evaluation_set(data: str, classes: list[str], record: dict[str, Any] | None = None,
                   data_dir: str | None = None) -> tuple[Dataset, str]:
    """(dataset, what it is): the run's own test split, rebuilt exactly, when `data` is what it trained on;
    data it never saw otherwise (see `_whole`). Classes are matched by name."""
    if record is not None and is_training_data(record, data):
        return _remap(replay_test_split(record, data), classes), "the run's test split"
    return _remap(_whole(data, classes, data_dir or (record or {}).get("data_dir")), classes), "data the run never saw"


def evaluate_checkpoint(checkpoint: str | Path, data: str, batch_size: int = 64, which: str = "best",
                        data_dir: str | None = None, report: str | Path | None = None) -> dict[str, Any]:
    """The `test` part of metrics.json for this checkpoint on this data; with `report`, also report.html and its
    figures in that folder (new files only: an existing one is never replaced)."""
    if report is not None:
        from ..report import REPORT_FILES, refuse_existing_files

        refuse_existing_files(Path(report), REPORT_FILES)  # before any work, not after it
    model, variables, card, step = restore_model(checkpoint, which)
    classes = list(card.classes)
    ds, what = evaluation_set(data, classes, run_record(checkpoint), data_dir)
    if report is not None and len(ds):
        _write_report(Predictor(model, variables, card, step=step), ds, what, data, checkpoint, which, report)
    loader = Loader(ds, card.preprocess, batch_size)
    result = score(make_eval_step(model, card.preprocess, len(classes), card.binary), variables, loader.epoch(0))
    return {
        "accuracy": result["accuracy"], "loss": result["loss"],
        "confusion_matrix": result["confusion"].astype(int).tolist(),
        "per_class": per_class_report(result["confusion"], classes),
        "images": len(loader), "scored": what, "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
    }


def _write_report(predictor: Predictor, ds: Dataset, what: str, data: str, checkpoint: str | Path, which: str,
                  out: str | Path) -> None:
    from ..report import curves_png, write_new_files
    from ..report.html import ReportContext
    from .report import report_files

    history = run_history(checkpoint)
    context = ReportContext(title=f"{predictor.card.model} on {data}", scored=what,
                            checkpoint=f"{which} checkpoint: epoch {predictor.step}")
    files = report_files(predictor, ds, context, curves_png(history) if history else None)
    write_new_files(Path(out), files)
