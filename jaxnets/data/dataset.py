"""Dataset and Splits: what every source becomes — class names, and example i as a path or a uint8 image
(decoded on demand, unreadable ones reported and skipped) — and the seeded, stratified splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .preprocess import ImageLike, PreprocessSpec, to_pixels

log = logging.getLogger("jaxnets.data")


@dataclass
class Dataset:
    """Examples of one split. `sources[i]` is a path or a uint8 image array; `labels[i]` its class index."""

    classes: list[str]
    sources: Sequence[ImageLike]
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if len(self.sources) != len(self.labels):
            raise ValueError(f"{len(self.sources)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, i: int, spec: PreprocessSpec) -> np.ndarray:
        """Example i as the model's uint8 HWC pixels. Raises ImageError for an unreadable file."""
        return to_pixels(self.sources[i], spec)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        src = self.sources[idx] if isinstance(self.sources, np.ndarray) else [self.sources[i] for i in idx]
        return Dataset(self.classes, src, self.labels[idx], self.skipped, name or self.name)

    def skip(self, source: ImageLike, reason: str) -> None:
        self.skipped.append((str(source), reason))
        log.warning("skipped %s: %s", source, reason)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def skipped(self) -> list[tuple[str, str]]:
        seen, out = set(), []
        for part in (self.train, self.val, self.test):
            for item in part.skipped:
                if item not in seen:
                    seen.add(item)
                    out.append(item)
        return out


# ----------------------------------------------------------------------------------------------- splits

def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Indices for each fraction (the rest goes to the first part), stratified by class.

    Uses numpy's PCG64 generator seeded explicitly, which gives the same permutation on every
    machine and numpy version, like torch's `random_split` with a fixed generator."""
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions must be ≥ 0 and leave something to train on, got {list(fractions)}")
    rng = np.random.Generator(np.random.PCG64(seed))
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        counts = [round(len(idx) * f) for f in fractions]
        for k, n in enumerate(counts, start=1):
            parts[k].extend(idx[start:start + n])
            start += n
        parts[0].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def split_dataset(ds: Dataset, val: float = 0.1, test: float = 0.1, seed: int = 0) -> Splits:
    train_idx, val_idx, test_idx = stratified_split(ds.labels, (val, test), seed)
    return Splits(ds.subset(train_idx, "train"), ds.subset(val_idx, "val"), ds.subset(test_idx, "test"))
