"""Using a checkpoint: its card, restoring plain variables, predicting, evaluating. Never imports training.

Names are imported on first use (PEP 562): `jaxnets.inference.card` and `.answers` are JAX-free, and the
service's front process imports only those.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "card": ("ModelCard", "read_card", "write_card"),
    "answers": ("describe", "non_finite_rows"),
    "scoring": ("forward", "make_eval_step", "probabilities", "score"),
    "predictor": ("NonFiniteOutputError", "Predictor", "restore_model"),
    "evaluate": ("evaluate_checkpoint",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
