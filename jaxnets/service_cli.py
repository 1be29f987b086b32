"""`jaxnets package` and `jaxnets serve`: BentoML for users who don't want to learn BentoML."""

from __future__ import annotations

import os
import subprocess
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("package", help="store a checkpoint in the BentoML model store; prints the tag")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--name", default="jaxnets-classifier", help="model name in the store")
    p.add_argument("--which", default="best", help="best, latest, or an epoch number")
    p.set_defaults(func=_package)

    s = sub.add_parser("serve", help="serve a packaged model over HTTP (runs `bentoml serve`)")
    s.add_argument("--model-tag", default=None, help="model tag (default: jaxnets-classifier:latest)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--max-request-bytes", type=int, default=None, help="largest request accepted")
    s.set_defaults(func=_serve)


def _package(args) -> int:
    from .serving.package import package_checkpoint

    which = int(args.which) if str(args.which).isdigit() else args.which
    print(package_checkpoint(args.checkpoint, args.name, which))
    return 0


def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "jaxnets.serving.service:JaxnetsClassifier",
            "--host", host, "--port", str(port)]


def _serve(args) -> int:
    env = dict(os.environ)
    if args.model_tag:
        env["JAXNETS_MODEL_TAG"] = args.model_tag
    if args.max_request_bytes:
        env["JAXNETS_MAX_REQUEST_BYTES"] = str(args.max_request_bytes)
    try:
        return subprocess.call(serve_command(args.host, args.port), env=env)
    except KeyboardInterrupt:
        return 0
