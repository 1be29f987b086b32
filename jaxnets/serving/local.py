"""Run the real service on a free loopback port for as long as a `with` block lasts (demo, tests, bench)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(log_path: str | Path, env: dict[str, str] | None = None, timeout: float = 240) -> Iterator[str]:
    """`bentoml serve` the jaxnets service in a subprocess; yields its URL once /readyz answers 200.

    Raises RuntimeError with the end of the server's log if it exits or is not ready in time; the server
    (its whole process group) is stopped when the block ends."""
    log_path = Path(log_path)
    port = free_port()
    log = open(log_path, "w")  # noqa: SIM115 (closed in the finally below; the server writes to it meanwhile)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "jaxnets.serving.service:JaxnetsClassifier",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "True", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"server not ready in {timeout}s:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
