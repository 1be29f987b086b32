"""The optional parts of jaxnets and the one error that names the extra to install.

The core install (`pip install jaxnets`) trains, evaluates and predicts on folders, IDX files and the embedded
digits. Everything else is an extra, imported only when it is used:

    serve       jaxnets package / serve, the HTTP service (BentoML, python-multipart, psutil)
    tfds        --data tfds:NAME (tensorflow-datasets, array-record)
    pretrained  .safetensors weights and timm: names from the Hugging Face hub (safetensors, huggingface_hub);
                .pth files need torch, which stays the user's to install
    export      jaxnets export --format onnx (jax2onnx, onnx)
    report      the figures of report.html and curves.png (matplotlib)
    all         every extra above

`require(extra, module)` imports a module of an extra or raises `MissingExtra`, whose one-line message is the
`pip install` to run. It is an ImportError (code that already catches those still does) and a ValueError (the
CLI answers those with one line and exit 2). Nothing here exits the process.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "serve": "serving a model over HTTP",
    "tfds": "TensorFlow Datasets (--data tfds:NAME)",
    "pretrained": "pretrained weights (.safetensors files, timm: names)",
    "export": "ONNX export",
    "report": "the report's figures",
}


class MissingExtra(ImportError, ValueError):
    """A package of an optional extra is not installed; the message says which `pip install` brings it."""

    def __init__(self, extra: str, module: str, what: str | None = None):
        self.extra = extra
        what = what or EXTRAS.get(extra, extra)
        super().__init__(f"{what} needs {module.split('.')[0]}, which is not installed: "
                         f"pip install 'jaxnets[{extra}]'", name=module)


def require(extra: str, module: str, what: str | None = None) -> ModuleType:
    """`import module`, or MissingExtra naming `pip install 'jaxnets[extra]'` when it (or what it needs to import)
    is missing. An ImportError from inside an installed module that is not about a missing module is not hidden."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingExtra(extra, e.name or module, what) from None


def available(module: str) -> bool:
    """Whether `module` can be imported (without importing it when it is not loaded yet)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None  # None: its import is blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
