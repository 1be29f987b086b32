"""TrainConfig: everything that defines a run, saved as config.json, validated before anything runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..data.augment import get_augment
from ..data.loader import DEFAULT_MEMORY_BUDGET
from ..data.preprocess import NORMALIZATIONS, RESIZE_MODES, PreprocessSpec
from ..models import create_model, get_entry
from ..models.layers import choose
from .optim import OptimConfig

LOSSES = ("auto", "bce", "softmax")
MONITORS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved as config.json; `resume` reads the same run back."""

    model: str = "lenet5"
    data: str = "digits"
    out: str = "runs/latest"
    model_options: dict[str, Any] = field(default_factory=dict)
    size: int | None = None  # None: the model's default input (registry)
    channels: int | None = None
    resize: str = "stretch"
    normalize: str | None = None
    val_split: float = 0.1
    test_split: float = 0.1
    labels: list[str] | None = None
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: str = "auto"  # auto (binary BCE for 2 classes, else softmax CE) | bce | softmax
    label_smoothing: float = 0.0
    augment: str = "none"
    dtype: str = "float32"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # start afresh in an `out` that holds an earlier jaxnets run (its files are deleted)
    patience: int | None = None
    min_delta: float = 0.0
    monitor: str = "val_accuracy"
    quiet: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def preprocess_spec(self) -> PreprocessSpec:
        entry = get_entry(self.model)
        size = self.size or entry.size
        return PreprocessSpec(size, size, self.channels or entry.channels, self.resize,
                              self.normalize or entry.normalize)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first option that cannot work, before any data is read or file written."""
        entry = get_entry(self.model)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.size is not None:
            _positive_int("size", self.size)
            if self.size < entry.min_size:
                raise ValueError(f"size {self.size} is below the smallest input {self.model} can compute on "
                                 f"({entry.min_size}×{entry.min_size})")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        choose({m: m for m in RESIZE_MODES}, self.resize, "resize mode")
        if self.normalize is not None:
            choose(NORMALIZATIONS, self.normalize, "normalisation")
        for name in ("val_split", "test_split", "label_smoothing"):
            _fraction(name, getattr(self, name))
        if self.val_split + self.test_split >= 1:
            raise ValueError(f"val_split + test_split must leave data to train on, got {self.val_split} + "
                             f"{self.test_split}")
        choose({x: x for x in LOSSES}, self.loss, "loss")
        choose({x: x for x in MONITORS}, self.monitor, "monitor")
        choose({x: x for x in DTYPES}, self.dtype, "dtype")
        get_augment(self.augment)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {self.seed!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"patience must be a whole number of epochs ≥ 1, got {self.patience!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be ≥ 0, got {self.min_delta!r}")
        _positive_int("memory_budget", self.memory_budget)
        if self.labels is not None and (not all(isinstance(x, str) and x.strip() for x in self.labels)
                                        or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be distinct, non-empty names, got {self.labels!r}")
        create_model(self.model, 2, **self.model_options, dtype=self.dtype)  # options checked, nothing initialised
        if self.resume and self.overwrite:
            raise ValueError("resume continues a run and overwrite deletes it: pass one of them, not both")
        self.optim.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        optim = d.pop("optim", {}) or {}
        optim = {**optim, "step_epochs": tuple(optim.get("step_epochs", ()))}
        return cls(**d, optim=OptimConfig(**optim))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")


def _fraction(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
