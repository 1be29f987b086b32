"""Shared test set-up: small, deterministic, CPU-only.

`JAXNETS_CORE_ONLY=1` (CI's second environment: a plain `pip install .`, the newest versions, no extras) runs the
core tests (`-m core`) and lets `extra(module)` skip a test whose extra is not installed. Without it (the dev
environment, `make test`) `extra` is a plain import: a missing package there is a failure, never a skip.
"""

import importlib
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CORE_ONLY = os.environ.get("JAXNETS_CORE_ONLY") == "1"


def extra(module: str):
    """The module of an extra (or a dev tool) a test needs: skipped for it in the core-only environment, imported
    (and failing when missing) everywhere else."""
    if CORE_ONLY:
        return pytest.importorskip(module, reason=f"{module} is not in the core install (JAXNETS_CORE_ONLY=1)")
    return importlib.import_module(module)


# the tests CI also runs in the core-only environment (`pytest -m core`), besides those marked `core` themselves:
# short ones over the core's whole path (data, training, checkpoints with the newest orbax, evaluation, prediction)
CORE_FILES = {"test_card.py", "test_data.py", "test_evaluate.py", "test_public_api.py", "test_cli_options.py"}
# the packages of the extras and the dev tools: in the core-only environment a test stopped by one of them missing
# is skipped (it belongs to an extra); anything else missing is a failure there too
NOT_IN_CORE = {"bentoml", "tensorflow_datasets", "array_record", "sklearn", "matplotlib", "safetensors",
               "huggingface_hub", "jax2onnx", "onnx", "onnxruntime", "torch", "torchvision", "timm", "playwright",
               "requests", "python_multipart", "multipart", "aiohttp"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in CORE_FILES:
            item.add_marker(pytest.mark.core)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    if not CORE_ONLY or outcome.excinfo is None:
        return
    error = outcome.excinfo[1]
    name = getattr(error, "name", None) or ""
    if isinstance(error, ImportError) and name.split(".")[0] in NOT_IN_CORE:
        outcome.force_exception(pytest.skip.Exception(f"needs {name}, not in the core install (JAXNETS_CORE_ONLY=1)",
                                                      _use_item_location=True))
