"""The house's one-way rules, checked on the real import graph."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

LAZY_PACKAGES = ("jaxnets", "jaxnets.data", "jaxnets.inference")


def _loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_inference_never_imports_training():
    loaded = _loaded_by("import jaxnets.inference.predictor, jaxnets.inference.evaluate, jaxnets.inference.card")
    assert not {m for m in loaded if m.startswith("jaxnets.train")}


def test_models_never_import_data_and_import_jaxnets_loads_no_jax():
    assert not {m for m in _loaded_by("import jaxnets.models") if m.startswith("jaxnets.data")}
    assert not {m for m in _loaded_by("import jaxnets") if m.split(".")[0] in ("jax", "flax", "optax", "orbax")}


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_is_what_it_says_not_a_submodule_of_the_same_name(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        if name == "__version__":
            continue
        value = getattr(module, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module"
    # after every submodule is imported (their names become package attributes), the names still hold
    for name in module.__all__:
        if name != "__version__":
            assert not isinstance(getattr(module, name), types.ModuleType), f"{package}.{name} is shadowed"
