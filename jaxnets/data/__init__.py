"""Data: sources → the one preprocessing path → fixed-shape batches (and augmentation for training).

Names are imported on first use (PEP 562), so that `jaxnets.data.preprocess` alone (PIL + numpy, what
the service's front process needs) never pulls JAX in through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "augment": ("AugmentSpec", "augment_batch", "get_augment"),
    "loader": ("Loader", "decode_all", "epoch_order"),
    "preprocess": ("ImageError", "PreprocessSpec", "model_input", "normalize", "standardize", "to_pixels", "to_unit"),
    "dataset": ("Dataset", "Splits", "split_dataset", "stratified_split"),
    "folders": ("image_folder", "labelled_by_filename"),
    "sources": ("digits", "folder_kind", "from_arrays", "idx_folder", "load_dataset", "read_idx", "tfds_splits"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_WHERE, "AUGMENT_PRESETS"])


def __getattr__(name: str) -> Any:
    if name == "AUGMENT_PRESETS":
        return importlib.import_module(".augment", __name__).PRESETS
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
