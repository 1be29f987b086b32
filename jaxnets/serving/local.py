"""Run the real service on a free loopback port for as long as a `with` block lasts (demo, tests, bench)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    """Every live process below `pid` (psutil.Process objects). `bentoml serve` starts each worker in a
    session of its own, so its process group holds the arbiter alone: stopping the server means knowing
    its tree, and knowing it before the arbiter exits (its orphans would then belong to init)."""
    import psutil  # a BentoML dependency

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_processes(processes: Iterable, grace_s: float = 20) -> None:
    """SIGTERM to every process still running, SIGKILL to those still there after `grace_s`."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


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
    tree = []
    try:
        deadline = time.time() + timeout
        while True:
            tree = descendants(proc.pid) or tree
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
        tree = descendants(proc.pid) or tree
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        stop_processes(tree, grace_s=10)  # workers left behind by an arbiter that died or was killed
        log.close()
