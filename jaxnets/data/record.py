"""The split record: which examples a run trained, validated and tested on, so that evaluating the run on
its own data scores exactly its test set, and data it never saw is scored whole.

A record holds how the splits were made (data, fractions, seed, labels) and a fingerprint of each split:
the SHA-256 of its classes, labels and example identities (a file's path relative to the data folder and
its size, or the pixel bytes of an in-memory image). The run's data is recognised by its folder or name,
or, moved or copied elsewhere, by the same fingerprints; replaying `load_dataset` with the recorded
arguments must give the recorded fingerprints, and a folder that changed since is refused rather than
silently re-split.
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


def _relative(source: Any, root: Path | None) -> str:
    path = Path(source).resolve()
    return os.path.relpath(path, root) if root is not None else str(path)


def _identity(source: Any, root: Path | None) -> str:
    if isinstance(source, (str, Path)):
        return f"{_relative(source, root)}:{Path(source).stat().st_size}"
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
    if root is not None and all(isinstance(src, (str, Path)) for src in splits.test.sources):  # which files
        record["test"]["files"] = [_relative(s, root) for s in splits.test.sources]
    return record


def read_record(path: Path) -> dict[str, Any]:
    """split.json, checked: a damaged record is a ValueError naming the file, never a traceback."""
    try:
        record = json.loads(path.read_text())
        assert isinstance(record, dict) and record.get("version") == RECORD_VERSION
        for key in ("data", "folder", "val_split", "test_split", "seed", "labels", "data_dir"):
            assert key in record
        assert all(isinstance(record[name], dict) and isinstance(record[name].get("fingerprint"), str)
                   for name in ("train", "val", "test"))
    except (ValueError, AssertionError, OSError):
        raise ValueError(f"{path} is damaged or from another version: cannot tell which images the run was tested "
                         "on") from None
    return record


def _replayed(record: dict[str, Any], data: str) -> Splits:
    return load_dataset(data, val_split=record["val_split"], test_split=record["test_split"], seed=record["seed"],
                        labels=record["labels"], data_dir=record["data_dir"])


def _differing(record: dict[str, Any], splits: Splits, root: Path | None) -> list[str]:
    return [name for name in ("train", "val", "test")
            if fingerprint(getattr(splits, name), root) != record[name]["fingerprint"]]


def is_training_data(record: dict[str, Any], data: str) -> bool:
    """Whether `data` is what the recorded run trained on: the same folder or name, or the same examples
    (same relative paths, sizes and labels) moved or copied to another folder."""
    if record.get("data") is None:
        return False
    root = data_root(data)
    if root is None or not record.get("folder"):
        return str(data) == str(record["data"])
    if str(root) == record["folder"]:
        return True
    try:
        return not _differing(record, _replayed(record, data), root)
    except (ValueError, OSError):  # not even loadable the way the run loaded its data: something else
        return False


def replay_test_split(record: dict[str, Any], data: str) -> Dataset:
    """The run's own test set, rebuilt from its data exactly as training made it, or a ValueError when the
    data changed since (a re-split would mix training images into the test set)."""
    splits = _replayed(record, data)
    changed = _differing(record, splits, data_root(data))
    if changed:
        raise ValueError(f"{data} changed since the run was trained on it ({', '.join(changed)} split(s) differ: "
                         f"test had {record['test']['images']} images, now {len(splits.test)}); its test split cannot "
                         "be replayed. Evaluate on a copy of the original data, or on a folder of new images")
    return splits.test
