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


def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "jaxnets.serving.service:JaxnetsClassifier",
            "--host", host, "--port", str(port)]


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
    """Run `bentoml serve` in its own process group and stop that whole group when this process is told
    to stop. SIGTERM and SIGINT are forwarded to the group (its arbiter and every worker), then, after
    `grace_s` (JAXNETS_STOP_TIMEOUT_S, default 20 s) or a second signal, the group is killed: a signal to
    `jaxnets serve` never leaves a server behind holding the port. Returns the server's exit code, 1 when
    a worker stopped it on purpose (a broken model), or 128 + the signal number when stopped by one."""
    grace_s = float(os.environ.get("JAXNETS_STOP_TIMEOUT_S", 20)) if grace_s is None else grace_s
    with tempfile.TemporaryDirectory(prefix="jaxnets-serve-") as tmp:
        fatal = Path(tmp) / "fatal"  # a worker that stops the server on purpose says why here
        code = _run_group(command, {**env, "JAXNETS_FATAL_FILE": str(fatal)}, grace_s)
        if code == 0 and fatal.exists():
            print(fatal.read_text().strip(), file=sys.stderr)
            return 1
    return code


def _run_group(command: list[str], env: dict[str, str], grace_s: float) -> int:
    """Run `command` and wait, keeping a fresh list of its process tree. A first SIGTERM/SIGINT becomes
    SIGTERM to the server (one clean shutdown path for both); a second one, or `grace_s` without exit,
    SIGKILL. Whatever of the tree outlives the server process is stopped too."""
    from .serving.local import descendants, stop_processes

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
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline or len(received) > 1:
                    stop_processes([*tree.values()], grace_s=0)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_processes([*tree.values()], grace_s)
    return 128 + received[0] if received else code
