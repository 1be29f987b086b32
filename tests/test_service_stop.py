"""SIGTERM to `jaxnets serve` stops the whole server tree and frees the port within 5 s, checked from the outside:
after start-up with a stalled upload and an idle keep-alive connection open, and in the middle of start-up (the
port already bound by BentoML's arbiter, the workers still importing and compiling, when they only note a
signal). Each process of the tree is collected with psutil before the signal; none may remain."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from serving import package_lenet, port_free

from jaxnets.serving.local import free_port

pytestmark = pytest.mark.slow
LIMIT_S = 5.0


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    return package_lenet(tmp_path_factory.mktemp("stop"))


def _start(packaged: dict, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jaxnets", "serve", "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=packaged["env"])
    return proc, port


def _ready(port: int) -> bool:
    with contextlib.suppress(OSError):
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    return False


def _wait(condition, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"not reached in {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def _server_processes(home: Path) -> list[psutil.Process]:
    """Every process serving from this test's BentoML home, whoever its parent is now (orphans included)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "jaxnets.serving.service:JaxnetsClassifier" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("BENTOML_HOME") == str(home) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def _workers_catch_sigterm(pid: int) -> bool:
    """Both workers have started, and their uvicorn has put its SIGTERM handler in (it does so before the
    services' start-up: from then on until they are ready, a SIGTERM is only noted)."""
    workers = [p for p in psutil.Process(pid).children(recursive=True) if "--service-name" in p.cmdline()]
    caught = []
    for w in workers:
        with contextlib.suppress(OSError):
            mask = next(line for line in Path(f"/proc/{w.pid}/status").read_text().splitlines()
                        if line.startswith("SigCgt:"))
            caught.append(int(mask.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return len(workers) == 2 and all(caught) and len(caught) == 2


def _sigterm_and_check(proc: subprocess.Popen, port: int, home: Path, log: Path) -> None:
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= 2, tree
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while time.monotonic() - start < LIMIT_S and not (port_free(port) and proc.poll() is not None):
        time.sleep(0.05)
    took = time.monotonic() - start
    assert port_free(port), f"port {port} still bound {took:.1f} s after SIGTERM:\n{log.read_text()[-3000:]}"
    assert proc.poll() == 128 + signal.SIGTERM, (proc.poll(), log.read_text()[-3000:])
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    assert not _server_processes(home)


def _kill_leftovers(proc: subprocess.Popen, home: Path) -> None:
    for p in [*_server_processes(home), psutil.Process(proc.pid)] if proc.poll() is None else _server_processes(home):
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_sigterm_after_start_up_frees_the_port_despite_stalled_and_idle_connections(packaged, tmp_path):
    log = tmp_path / "serve.log"
    proc, port = _start(packaged, log)
    clients = []
    try:
        _wait(lambda: _ready(port), 240, proc, log)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
                        b"Content-Length: 100000\r\n\r\n--XyZ\r\n")  # a body that never comes (read timeout 30 s)
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(1000).startswith(b"HTTP/1.1 200")  # kept alive
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        clients = [stalled, idle, half]
        time.sleep(0.3)
        _sigterm_and_check(proc, port, packaged["home"], log)
    finally:
        for c in clients:
            c.close()
        _kill_leftovers(proc, packaged["home"])


def test_sigterm_during_start_up_frees_the_port(packaged, tmp_path):
    """The arbiter binds the port before any worker is ready: a client that sees the port open may stop the
    server then. The workers' uvicorn only notes the signal until their start-up is over."""
    log = tmp_path / "serve.log"
    proc, port = _start(packaged, log)
    try:
        _wait(lambda: not port_free(port) and _workers_catch_sigterm(proc.pid), 120, proc, log)
        _sigterm_and_check(proc, port, packaged["home"], log)
    finally:
        _kill_leftovers(proc, packaged["home"])
