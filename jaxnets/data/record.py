"""The split record: which examples a run trained, validated and tested on, so that evaluating the run on
its own data scores exactly its test set, and data it never saw is scored whole.

A record holds how the splits were made (data, fractions, seed, labels) and a fingerprint of each split:
the SHA-256 of its classes, labels and example identities (file paths relative to the data folder, or the
pixel bytes of in-memory images). Replaying `load_dataset` with the recorded arguments must give the
recorded test fingerprint; a folder that changed since is refused rather than silently re-split.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset, Splits
from .sources import load_dataset

RECORD_VERSION = 1


def _identity(source: Any, root: Path | None) -> str:
    if isinstance(source, (str, Path)):
        path = Path(source).resolve()
        return os.path.relpath(path, root) if root is not None else str(path)
    return hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()


def data_root(data: str) -> Path | None:
    """The folder `data` names (resolved), or None for named sources (digits, tfds:NAME)."""
    path = Path(str(data)).expanduser()
    return path.resolve() if path.is_dir() else None


def fingerprint(ds: Dataset, root: Path | None) -> str:
    """SHA-256 of what a split holds: its classes and, in order, each example's identity and label."""
    digest = hashlib.sha256(json.dumps(list(ds.classes)).encode())
    for source, label in zip(ds.sources, ds.labels, strict=True):
        digest.update(f"{_identity(source, root)}\t{int(label)}\n".encode())
    return digest.hexdigest()


def split_record(data: str | None, splits: Splits, *, val_split: float, test_split: float, seed: int,
                 labels: list[str] | None, data_dir: str | None) -> dict[str, Any]:
    """The record a run writes as split.json. `data` None: splits given in memory (they cannot be replayed)."""
    root = data_root(data) if data is not None else None
    parts = {name: getattr(splits, name) for name in ("train", "val", "test")}
    record: dict[str, Any] = {
        "version": RECORD_VERSION, "data": data, "folder": str(root) if root else None, "val_split": val_split,
        "test_split": test_split, "seed": seed, "labels": labels, "data_dir": data_dir,
        **{name: {"images": len(ds), "fingerprint": fingerprint(ds, root)} for name, ds in parts.items()},
    }
    if root is not None:  # for a person reading the record: which files the run was tested on
        record["test"]["files"] = [_identity(s, root) for s in splits.test.sources]
    return record


def is_training_data(record: dict[str, Any], data: str) -> bool:
    """Whether `data` names the data the recorded run was trained on (the same folder, or the same name)."""
    if record.get("data") is None:
        return False
    root = data_root(data)
    if root is not None and record.get("folder"):
        return str(root) == record["folder"]
    return str(data) == str(record["data"])


def replay_test_split(record: dict[str, Any], data: str) -> Dataset:
    """The run's own test set, rebuilt from its data exactly as training made it, or a ValueError when the
    data changed since (a re-split would mix training images into the test set)."""
    splits = load_dataset(data, val_split=record["val_split"], test_split=record["test_split"], seed=record["seed"],
                          labels=record["labels"], data_dir=record["data_dir"])
    root = data_root(data)
    changed = [name for name in ("train", "val", "test")
               if fingerprint(getattr(splits, name), root) != record[name]["fingerprint"]]
    if changed:
        raise ValueError(f"{data} changed since the run was trained on it ({', '.join(changed)} split(s) differ: "
                         f"test had {record['test']['images']} images, now {len(splits.test)}); its test split cannot "
                         "be replayed. Evaluate on a copy of the original data, or on a folder of new images")
    return splits.test
