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
