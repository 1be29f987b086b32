"""`jaxnets train` and `jaxnets lr-find`: the options built from TrainConfig, a resumed run's saved config, and
how a run (one process or several) ends: its exit code and one line, never a trace."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from ..options import positive_int
from .common import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PEER_LOST, EXIT_USAGE, one_line, refuse_existing

__all__ = ["add_lr_find", "add_train"]


def add_train(sub) -> None:
    from ..options import add_config_arguments
    from ..train.config import FINETUNE_RECIPE, TrainConfig

    settings = {**FINETUNE_RECIPE, **FINETUNE_RECIPE["optim"]}
    recipe = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if k != "optim")
    from ..train.recipes import describe_recipes

    p = sub.add_parser("train", help="train a model; keeps the best and latest checkpoints",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a registered model on a dataset. Example: "
                                   "jaxnets train --model lenet5 --data digits --out runs/digits.\n"
                                   "The options not given come from the model family's recipe (the defaults "
                                   "shown below each option are the bare ones):\n" + describe_recipes() + "\n"
                                   "With --pretrained, they come from the fine-tuning recipe instead: "
                                   f"{recipe}, --freeze-epochs 1, --backbone-lr-mult 0.1.")
    add_config_arguments(p, TrainConfig)
    group = p.add_argument_group("several processes (jax.distributed; without these, JAX's own cluster detection: "
                                 "Slurm, Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address, the same for all")
    group.add_argument("--num-processes", type=positive_int, default=None, help="how many processes train together")
    group.add_argument("--process-id", type=int, default=None, help="this process's number, 0 … N-1")
    p.set_defaults(func=_train)


def add_lr_find(sub) -> None:
    from ..options import add_config_arguments
    from ..train.config import TrainConfig

    p = sub.add_parser("lr-find", help="the learning-rate range test: loss against lr, and a suggested lr",
                       description="Trains from the initial weights for --steps steps while the learning rate grows "
                                   "exponentially from --start to --end, and suggests the lr where the smoothed "
                                   "loss falls fastest. Takes the options of `train` (the same recipe defaults); "
                                   "writes nothing but the --plot file. Example: jaxnets lr-find --model resnet18 "
                                   "--data photos/ --plot lr.png")
    add_config_arguments(p, TrainConfig)
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate")
    p.add_argument("--steps", type=positive_int, default=100, help="steps of the test (one lr each)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write the curve here (never over a file)")
    p.set_defaults(func=_lr_find)


def _lr_find(args) -> int:
    from ..train.lrfind import lr_find, plot_png

    if args.plot is not None:
        refuse_existing(Path(args.plot), "--plot")
    if getattr(args, "resume", False) or getattr(args, "overwrite", False):
        raise ValueError("lr-find writes no run: --resume and --overwrite do not apply (give the options instead)")
    cfg, _ = _train_config(args)
    result = lr_find(cfg.validate(), start=args.start, end=args.end, steps=args.steps)
    if args.plot is not None:
        with open(args.plot, "xb") as f:
            f.write(plot_png(result, f"{cfg.model} on {cfg.data}, {cfg.optim.optimizer}"))
    print(f"suggested lr {result.suggestion:.3g} (steepest descent of the smoothed loss; {len(result.losses)} steps, "
          f"lowest loss {float(result.smoothed.min()):.4f} at lr {float(result.lrs[result.smoothed.argmin()]):.3g})")
    return 0


def _model_options(given: dict) -> dict:
    """Model options as create_model takes them: one activation is a name, several are a list."""
    opts = dict(given)
    if isinstance(opts.get("activation"), list) and len(opts["activation"]) == 1:
        opts["activation"] = opts["activation"][0]
    return opts


def _train_config(args):
    """(config, announce): the typed options over the defaults, or, with --resume, over the saved run's config;
    `announce` prints what changed once the resume is accepted."""
    from ..options import given
    from ..train.config import TrainConfig, changes, from_options, saved_config

    top, nested, model = given(args, TrainConfig)
    if "hidden_sizes" in model and not model["hidden_sizes"]:
        raise ValueError("--hidden-sizes takes comma-separated whole numbers such as 256,64")
    saved = saved_config(top.get("out", TrainConfig.out)) if top.get("resume") else None
    if saved is not None:  # how the saved run was started (--overwrite, --quiet) is not part of what it is
        saved = dataclasses.replace(saved, resume=False, overwrite=False, quiet=False)
    # --pretrained alone brings the fine-tuning recipe; otherwise the model family's recipe fills the gaps
    if saved is not None:
        base = saved
    elif top.get("pretrained"):
        base = TrainConfig.finetuning(model=top.get("model", TrainConfig.model))
    else:
        base = TrainConfig.recommended(top.get("model", TrainConfig.model),
                                       optim={k: v for k, v in nested.get("optim", {}).items()
                                              if k in ("optimizer", "weight_decay")})
    cfg = from_options(top, nested.get("optim", {}), _model_options(model), base=base)
    diff = changes(saved, cfg) if saved is not None else []
    note = f"resuming {cfg.out}" + (f" with {'; '.join(diff)}" if diff else " with its saved options")
    return cfg, (lambda: print(note, file=sys.stderr)) if saved is not None else None


def _resume_command(argv: list[str]) -> str:
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return "jaxnets " + " ".join(shlex.quote(a) for a in [*kept, "--resume"])


def _train(args) -> int:
    from ..runtime.sharding import check_same_everywhere, initialize_distributed
    from ..train import NonFiniteLossError, TrainingInterrupted, fit

    cfg, announce = _train_config(args)
    cfg.validate()
    several = initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if several:
        check_same_everywhere("their options", {k: v for k, v in cfg.to_dict().items() if k != "quiet"})
        if _process_index():
            announce = None  # process 0 speaks for the run
    try:
        result = fit(cfg, on_start=announce)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as e:
        if several:  # the others wait in a collective for this one: leaving at once tells them (exit 4 there)
            print(f"{e}. Resume by starting every process again with --resume", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        print(f"{e}. Resume with: {_resume_command(args.argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # with several processes no error may reach JAX's shutdown barrier (it aborts there)
        if not several:
            raise
        _stop_after_error(e)
    test = result.metrics.get("test", {})
    print(f"best epoch {result.best_epoch}; test accuracy {test.get('accuracy', float('nan')):.4f}; "
          f"checkpoint {result.out / 'checkpoints'}")
    return 0


def _process_index() -> int:
    import jax

    return jax.process_index()


def _others_alive(timeout_s: float = 10.0) -> bool:
    """Whether every process reaches this point within `timeout_s`: the same error everywhere (a mistake all of
    them found), rather than a process that is gone."""
    from jax._src import distributed

    try:
        distributed.global_state.client.wait_at_barrier("jaxnets-after-error", int(timeout_s * 1000))
        return True
    except Exception:  # the barrier fails or times out when a process is gone
        return False


def _stop_after_error(error: BaseException) -> None:
    """End a multi-process run that failed, in one line and without JAX's shutdown (which waits for a lost
    process at a barrier and then aborts with pages of log): exit 4 when another process is gone, else exit 2
    for a mistake every process found (1 for anything else)."""
    if not _others_alive():
        _peer_lost(error)
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_USAGE if isinstance(error, (ValueError, OSError)) else 1)


def _peer_lost(error: BaseException) -> None:
    """One line, then exit at once: JAX's shutdown would wait for the lost process at a barrier and then abort
    with pages of coordination-service log. The checkpoints are whole (each step is saved before the next)."""
    import re

    import jax

    reason = re.sub(r"(Error dispatching computation: )+", "", one_line(error))[:300]
    print(f"error: process {jax.process_index()} of {jax.process_count()} lost the others of this run ({reason}); "
          "its checkpoints are kept: restart every process with --resume", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)
