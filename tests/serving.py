"""The tests start the real server with the same helper as `make demo`, in a private BentoML home."""

from __future__ import annotations

from pathlib import Path

from jaxnets.serving.local import running_server as _running_server


def running_server(bentoml_home: Path, log_path: Path, timeout: float = 240, **env_extra):
    return _running_server(log_path, env={"BENTOML_HOME": str(bentoml_home), **env_extra}, timeout=timeout)
