"""jaxnets: the classic image classifiers in JAX/Flax, from a folder of pictures to an HTTP answer.

The public face, imported on first use (PEP 562) so that `import jaxnets` stays light and JAX-free:

    from jaxnets import create_model, load_dataset, TrainConfig, OptimConfig, fit, Predictor, evaluate_checkpoint
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__ as __version__  # re-exported: the version lives below the face

_EXPORTS = {
    "models": ("create_model", "list_models"),
    "data": ("PreprocessSpec", "load_dataset"),
    "train": ("OptimConfig", "TrainConfig", "fit"),
    "inference": ("ModelCard", "Predictor", "evaluate_checkpoint", "read_card"),
    "serving.package": ("package_checkpoint",),
    "nnx": ("from_nnx", "to_nnx"),  # a model as a Flax NNX module (docs/nnx.md)
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    """The module's real names plus the lazy public ones: without it `dir(jaxnets)` and tab completion
    would hide the whole API, which only `__getattr__` knows about."""
    return sorted({*globals(), *__all__})
