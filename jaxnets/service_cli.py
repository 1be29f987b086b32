"""`jaxnets package` and `jaxnets serve`: BentoML for users who don't want to learn BentoML."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_parser(sub) -> None:
    from .options import port, positive_int, which

    p = sub.add_parser("package", help="store a checkpoint in the BentoML model store; prints the tag")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--name", default="jaxnets-classifier", help="model name in the store")
    p.add_argument("--which", default="best", type=which, help="best, latest, or an epoch number")
    p.set_defaults(func=_package)

    s = sub.add_parser("serve", help="serve a packaged model over HTTP (runs `bentoml serve`)")
    s.add_argument("--model-tag", default=None, help="model tag (default: jaxnets-classifier:latest)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port, default=3000)
    s.add_argument("--max-request-bytes", type=positive_int, default=None, help="largest request accepted")
    s.set_defaults(func=_serve)


def _package(args) -> int:
    from .serving.package import package_checkpoint

    print(package_checkpoint(args.checkpoint, args.name, args.which))
    return 0


# seconds uvicorn gives the requests in flight once told to stop (BentoML's hidden `--timeout-graceful-shutdown`):
# after it, they are cancelled, so a stalled upload cannot hold a worker (and the port) until its read timeout
DRAIN_S = 2
# seconds from the first SIGTERM/SIGINT to SIGKILL for whatever of the tree is still there (JAXNETS_STOP_TIMEOUT_S)
STOP_TIMEOUT_S = 3.0


def serve_command(host: str, port: int) -> list[str]:
    """`bentoml serve` for the jaxnets service, draining requests in flight for at most DRAIN_S on stop."""
    return [sys.executable, "-m", "bentoml", "serve", "jaxnets.serving.service:JaxnetsClassifier",
            "--host", host, "--port", str(port), "--timeout-graceful-shutdown", str(DRAIN_S)]


def _serve(args) -> int:
    from .extras import require

    require("serve", "bentoml")  # one line naming `pip install 'jaxnets[serve]'`, before any server starts
    env = dict(os.environ)
    if args.model_tag:
        env["JAXNETS_MODEL_TAG"] = args.model_tag
    if args.max_request_bytes:
        env["JAXNETS_MAX_REQUEST_BYTES"] = str(args.max_request_bytes)
    return run_server(serve_command(args.host, args.port), env)


def run_server(command: list[str], env: dict[str, str], grace_s: float | None = None) -> int:
    """Run `bentoml serve` in its own process group and stop its whole tree when this process is told to
    stop: SIGTERM and SIGINT are forwarded to BentoML's arbiter, and after `grace_s` (JAXNETS_STOP_TIMEOUT_S,
    default 3 s) or a second signal every process of the tree is killed. The grace must be short: BentoML's
    arbiter waits up to a day for its workers (circus graceful_timeout=86400), and a worker still starting
    (importing JAX, compiling every bucket, or waiting for the model service to be ready) only notes the
    signal and acts on it once its start-up is over, which on a cold machine is many seconds; meanwhile the
    arbiter holds the listening socket. Returns the server's exit code, 1 when a worker stopped it on purpose
    (a broken model), or 128 + the signal number when stopped by one."""
    if grace_s is None:
        grace_s = float(os.environ.get("JAXNETS_STOP_TIMEOUT_S") or STOP_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="jaxnets-serve-") as tmp:
        fatal = Path(tmp) / "fatal"  # a worker that stops the server on purpose says why here
        code = _run_group(command, {**env, "JAXNETS_FATAL_FILE": str(fatal)}, grace_s)
        if code == 0 and fatal.exists():
            print(fatal.read_text().strip(), file=sys.stderr)
            return 1
    return code


def _run_group(command: list[str], env: dict[str, str], grace_s: float) -> int:
    """Run `command` and wait, keeping a fresh list of its process tree (its workers live in sessions of
    their own, so the tree, not the process group, is what must be stopped). A first SIGTERM/SIGINT becomes
    SIGTERM to the server; a second one, or `grace_s` without exit, SIGKILL to the whole tree at once.
    Whatever of the tree outlives the server process is killed too."""
    from .serving.local import descendants

    proc = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []
    tree: dict[int, object] = {}
    deadline = float("inf")

    def forward(signum, _frame) -> None:
        nonlocal deadline
        received.append(signum)
        deadline = min(deadline, time.monotonic() + grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if len(received) == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            tree.update((p.pid, p) for p in descendants(proc.pid))
            try:
                code = proc.wait(timeout=0.1 if received else 0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline or len(received) > 1:
                    _kill_tree(proc, [*tree.values()])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _kill_tree(proc, [*tree.values()])  # workers of an arbiter that died, or exited before them
    return 128 + received[0] if received else code


def _kill_tree(proc: subprocess.Popen, tree: list) -> None:
    """SIGKILL to the server's process group and every process of its tree, all at once (no wait between:
    a killed worker stays a zombie until its parent reaps it, and waiting for it held the port for seconds)."""
    import psutil  # a BentoML dependency

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()  # psutil checks the pid still names the same process
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
