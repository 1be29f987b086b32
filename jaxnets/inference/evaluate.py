"""Evaluate a saved checkpoint on labelled data, matching classes by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.loader import Loader
from ..data.sources import Dataset, folder_kind, image_folder, load_dataset
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


def evaluation_set(data: str, classes: list[str], seed: int = 0, data_dir: str | None = None) -> Dataset:
    """The test split of `data`, or all of it when it is a plain class folder (new photos, no splits)."""
    root = Path(data)
    if root.is_dir() and folder_kind(root) == "classes":
        return _remap(image_folder(root), classes)
    return _remap(load_dataset(data, seed=seed, data_dir=data_dir).test, classes)


def evaluate_checkpoint(checkpoint: str | Path, data: str, batch_size: int = 64, which: str = "best",
                        data_dir: str | None = None) -> dict[str, Any]:
    """The `test` part of metrics.json for this checkpoint on this data."""
    model, variables, card, _ = restore_model(checkpoint, which)
    classes = list(card.classes)
    seed = int((card.train_config or {}).get("seed", 0))
    ds = evaluation_set(data, classes, seed, data_dir)
    loader = Loader(ds, card.preprocess, batch_size)
    result = score(make_eval_step(model, card.preprocess, len(classes), card.binary), variables, loader.epoch(0))
    return {
        "accuracy": result["accuracy"], "loss": result["loss"],
        "confusion_matrix": result["confusion"].astype(int).tolist(),
        "per_class": per_class_report(result["confusion"], classes),
        "images": len(loader), "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
    }
