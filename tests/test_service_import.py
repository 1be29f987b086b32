"""Importing the service module needs no packaged model (no SystemExit at import: tools, tests and `bentoml build`
of something else import it); starting the service without one is a clear one-line error, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxnets.serving.local import free_port


@pytest.fixture
def empty_home(tmp_path):
    return {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "JAXNETS_MODEL_TAG": "no-such-model:latest"}


def test_importing_the_service_without_a_model_returns_normally(empty_home):
    code = ("import jaxnets.serving.service as s\n"
            "try:\n    s.verified_model(s.MODEL_TAG)\nexcept s.ModelUnavailable as e:\n    print('refused:', e)\n"
            "print('imported', s.JaxnetsClassifier.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=empty_home, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "imported jaxnets_classifier" in out.stdout
    assert "refused: jaxnets: cannot load model 'no-such-model:latest'" in out.stdout


@pytest.mark.parametrize("how", ["jaxnets", "bentoml"])
def test_serving_without_a_model_is_one_line_and_exit_1(empty_home, tmp_path, how):
    port = str(free_port())
    command = ([sys.executable, "-m", "jaxnets", "serve", "--port", port] if how == "jaxnets" else
               [sys.executable, "-m", "bentoml", "serve", "jaxnets.serving.service:JaxnetsClassifier", "--port", port])
    out = subprocess.run(command, capture_output=True, text=True, env=empty_home, timeout=120, cwd=tmp_path)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert "cannot load model 'no-such-model:latest'" in lines[0] and "jaxnets package" in lines[0]
