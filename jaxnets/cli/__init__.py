"""The `jaxnets` command: train | evaluate | predict | lr-find | convert | export | package | serve | bench.

`run` (the console script `jaxnets = jaxnets.cli:run`) tunes the process, then `main` builds the parser from one
module per command group and turns a mistake into one line and exit 2: training.py (train, lr-find),
evaluate.py, predict.py, convert.py, export.py here; service_cli.py (package, serve) and bench/ beside this
package. common.py holds the exit codes and the one-line parser they share.
"""

from __future__ import annotations

import logging
import sys

from .common import EXIT_INTERRUPTED, EXIT_USAGE, Parser, one_line
from .convert import add_convert
from .evaluate import add_evaluate
from .export import add_export
from .predict import add_predict
from .training import add_lr_find, add_train

__all__ = ["main", "run"]


def run() -> int:
    """The `jaxnets` console script and `python -m jaxnets`: a process jaxnets owns, so it makes the one
    process-wide setting (runtime.tune_process, docs/backends.md) before JAX starts, then runs `main`. `main` itself
    tunes nothing: a program (or a test) calling it in its own process keeps its malloc as it was."""
    from ..runtime import tune_process

    tune_process()
    return main()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's informational lines are not for users
    parser = Parser(prog="jaxnets", description="Classic image classifiers in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_evaluate(sub)
    add_predict(sub)
    add_lr_find(sub)
    add_convert(sub)
    add_export(sub)
    from .. import bench, service_cli  # their heavy imports happen inside the commands, not here

    service_cli.add_parser(sub)
    bench.add_parser(sub)
    sub.add_parser("build-kernels", help="build jaxnets' AVX-512 CPU kernels now instead of on first use "
                                         "(x86-64 Linux with AVX-512 and g++; elsewhere XLA's operations run)"
                   ).set_defaults(func=_build_kernels)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # a mistake in what was asked for: one line, no traceback
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# the names the tests build a parser from, as they were when the command was one module
_Parser, _add_train = Parser, add_train


def _build_kernels(args) -> int:
    from ..runtime import native

    return native.main([])
