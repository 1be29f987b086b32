"""The tests start the real server with the same helper as `make demo`, in a private BentoML home."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from jaxnets.serving.local import running_server as _running_server


def running_server(bentoml_home: Path, log_path: Path, timeout: float = 240, **env_extra):
    return _running_server(log_path, env={"BENTOML_HOME": str(bentoml_home), **env_extra}, timeout=timeout)


def package_lenet(root: Path, names: tuple[str, ...] = ("jaxnets-classifier",), **fit_options) -> dict:
    """A one-epoch LeNet-5 on the digits, packaged under each of `names` in a private BentoML home in `root`:
    {"run", "home", "env"} (env: os.environ with that home, tracking off)."""
    from jaxnets.train import OptimConfig, TrainConfig, fit

    options = {"model": "lenet5", "data": "digits", "epochs": 1, "batch_size": 64, "optim": OptimConfig(lr=2e-3),
               "out": str(root / "run"), "quiet": True, **fit_options}
    run = fit(TrainConfig(**options)).out
    home = root / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    script = ("import sys; from jaxnets.serving.package import package_checkpoint\n"
              "for name in sys.argv[2:]: print(package_checkpoint(sys.argv[1], name))")
    pkg = subprocess.run([sys.executable, "-c", script, str(run), *names], capture_output=True, text=True, env=env)
    assert pkg.returncode == 0, pkg.stderr[-2000:]
    return {"run": Path(run), "home": home, "env": env}


def port_free(port: int) -> bool:
    """Nothing listens on `port`: a connection is refused and the port can be bound again."""
    with socket.socket() as probe, contextlib.suppress(OSError):
        probe.settimeout(1)
        probe.connect(("127.0.0.1", port))
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
