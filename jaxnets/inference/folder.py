"""Prediction over many files: folders walked recursively, images decoded and scored in the Predictor's batch
sizes, one CSV row per readable image, the unreadable ones collected (never fatal)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from ..data.preprocess import ImageError
from .answers import non_finite_rows
from .predictor import NonFiniteOutputError, Predictor

__all__ = ["expand_paths", "predict_files", "write_csv"]


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given, and every file under a folder (recursively, sorted, hidden entries and symlinked folders
    left out so a link cannot loop). Whether each one is an image is for the decoder to say."""
    out: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            out += sorted(p for p in _walk(given) if p.is_file())
        else:
            out.append(given)
    return out


def _walk(folder: Path) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            yield from _walk(entry)
        elif not entry.is_dir():
            yield entry


def predict_files(predictor: Predictor, files: Iterable[Path], tta: str | None = None,
                  skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, probabilities) for each readable file, in order, decoded and scored a largest bucket at a time;
    an unreadable one is appended to `skipped` as (path, reason)."""
    chunk: list[tuple[Path, np.ndarray]] = []
    size = predictor.buckets[-1]
    for path in files:
        try:
            chunk.append((path, predictor.pixels([path])[0]))
        except (ImageError, OSError) as e:
            if skipped is not None:
                skipped.append((str(path), str(e)))
            continue
        if len(chunk) == size:
            yield from _score(predictor, chunk, tta)
            chunk = []
    if chunk:
        yield from _score(predictor, chunk, tta)


def _score(predictor: Predictor, chunk: list[tuple[Path, np.ndarray]], tta: str | None):
    probs = predictor.predict_pixels(np.stack([pixels for _, pixels in chunk]), tta=tta)
    if non_finite_rows(probs):
        raise NonFiniteOutputError(f"{predictor.card.model} produced non-finite probabilities: its weights "
                                   f"(restored step {predictor.step}) are broken")
    return zip((path for path, _ in chunk), probs, strict=True)


def write_csv(out: TextIO, predictor: Predictor, rows: Iterable[tuple[Path, np.ndarray]]) -> int:
    """path, label, then one column per class (`p_<class>`, the probability); returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", *(f"p_{c}" for c in predictor.classes)])
    n = 0
    for path, probs in rows:
        name = str(path).encode("utf-8", "backslashreplace").decode("utf-8")  # a non-UTF-8 name, escaped
        writer.writerow([name, predictor.classes[int(np.argmax(probs))], *(f"{p:.6g}" for p in probs)])
        n += 1
    return n
