"""Turning probabilities into answers, JAX-free: the Predictor and the service's front process (which never
runs a model and must not import JAX) share these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def describe(probs: np.ndarray, classes: Sequence[str], top_k: int = 5) -> list[dict[str, Any]]:
    """Probabilities → [{"label", "probabilities": {class: p}, "top_k": [{"label", "probability"}]}]."""
    k = max(1, min(top_k, len(classes)))
    results = []
    for row in np.asarray(probs):
        order = np.argsort(-row, kind="stable")[:k]
        results.append({
            "label": classes[int(order[0])],
            "probabilities": {c: float(p) for c, p in zip(classes, row, strict=True)},
            "top_k": [{"label": classes[int(i)], "probability": float(row[i])} for i in order],
        })
    return results


def non_finite_rows(probs: np.ndarray) -> list[int]:
    """Indices of the rows holding a NaN or an infinity (an answer built from them would be nonsense)."""
    probs = np.asarray(probs, dtype=np.float64)
    return [int(i) for i in np.flatnonzero(~np.isfinite(probs.reshape(len(probs), -1)).all(axis=1))]
