"""The `jaxnets` command: train | evaluate | predict | package | serve | bench."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys

from .models import get_entry, list_models

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a command-line mistake in one line (no usage block) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def _which(text: str):
    from .checkpoint import parse_which

    try:
        return parse_which(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model; keeps the best and latest checkpoints",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a registered model on a dataset. Example: "
                                   "jaxnets train --model lenet5 --data digits --out runs/digits")
    p.add_argument("--model", default="lenet5", choices=list_models(), help="model name")
    p.add_argument("--data", default="digits",
                   help="'digits', 'tfds:NAME', or a folder (class folders, train/val/test folders, MNIST IDX files, "
                        "or one flat folder labelled by file name)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--labels", default=None, help="comma-separated labels for a flat folder, e.g. cat,dog")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction carved out for validation")
    p.add_argument("--test-split", type=float, default=0.1, help="fraction carved out for test")
    p.add_argument("--size", type=int, default=None, help="input height=width (default: the model's)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grey, 3 RGB (default: the model's)")
    p.add_argument("--resize", default="stretch", choices=("stretch", "crop", "pad"),
                   help="stretch to size, shorter side + centre crop, or pad (MNIST 28 → 32)")
    p.add_argument("--normalize", default=None, choices=("none", "half", "imagenet"),
                   help="pixel normalisation (default: the model's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", choices=("sgd", "momentum", "adam", "adamw", "rmsprop"))
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine", "warmup_cosine", "step", "plateau"))
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="for warmup_cosine")
    p.add_argument("--momentum", type=float, default=0.9, help="for momentum (and rmsprop with --nesterov)")
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this global norm")
    p.add_argument("--loss", default="auto", choices=("auto", "bce", "softmax"),
                   help="auto: one logit + BCE for 2 classes, softmax cross-entropy otherwise")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", default="none", help="augmentation preset: none, flip, light, classic")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--hidden-sizes", default=None, help="MLP hidden sizes, e.g. 256,64")
    p.add_argument("--activation", default=None, help="MLP activation(s): relu or relu,tanh,…")
    p.add_argument("--init", default=None, help="MLP init: he, xavier, lecun, small, zeros")
    p.add_argument("--dropout-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latest", help="run directory (checkpoints, history, plots, metrics)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds checkpoints")
    p.add_argument("--patience", type=int, default=None, help="early stopping: epochs without improvement")
    p.add_argument("--min-delta", type=float, default=0.0)
    p.add_argument("--monitor", default="val_accuracy", choices=("val_accuracy", "val_loss", "train_accuracy",
                                                                 "train_loss"))
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=_train)


def _model_options(args) -> dict:
    opts = {}
    if args.hidden_sizes:
        sizes = args.hidden_sizes.split(",")
        if not all(x.strip().isdecimal() for x in sizes):
            raise ValueError(f"--hidden-sizes takes comma-separated whole numbers such as 256,64, not "
                             f"{args.hidden_sizes!r}")
        opts["hidden_sizes"] = [int(x) for x in sizes]
    if args.activation:
        acts = args.activation.split(",")
        opts["activation"] = acts[0] if len(acts) == 1 else acts
    if args.init:
        opts["init"] = args.init
    if args.dropout_rate is not None:
        opts["dropout_rate"] = args.dropout_rate
    return opts


def _resume_command(argv: list[str]) -> str:
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return "jaxnets " + " ".join(shlex.quote(a) for a in [*kept, "--resume"])


def _train(args) -> int:
    from .sharding import maybe_initialize_distributed
    from .train import NonFiniteLossError, OptimConfig, TrainConfig, TrainingInterrupted, fit

    get_entry(args.model)
    maybe_initialize_distributed()  # multi-host only when JAX_COORDINATOR_ADDRESS / JAXNETS_DISTRIBUTED=1 is set
    cfg = TrainConfig(
        model=args.model, data=args.data, out=args.out, model_options=_model_options(args), size=args.size,
        channels=args.channels, resize=args.resize, normalize=args.normalize, val_split=args.val_split,
        test_split=args.test_split, labels=args.labels.split(",") if args.labels else None, data_dir=args.data_dir,
        epochs=args.epochs, batch_size=args.batch_size,
        optim=OptimConfig(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule, momentum=args.momentum,
                          nesterov=args.nesterov, weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                          warmup_epochs=args.warmup_epochs),
        loss=args.loss, label_smoothing=args.label_smoothing, augment=args.augment, dtype=args.dtype,
        seed=args.seed, resume=args.resume, overwrite=args.overwrite, patience=args.patience,
        min_delta=args.min_delta, monitor=args.monitor, quiet=args.quiet,
    )
    try:
        result = fit(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as e:
        print(f"{e}. Resume with: {_resume_command(args.argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    test = result.metrics.get("test", {})
    print(f"best epoch {result.best_epoch}; test accuracy {test.get('accuracy', float('nan')):.4f}; "
          f"checkpoint {result.out / 'checkpoints'}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate the best checkpoint on labelled data",
                       description="Evaluates on the test split of --data, or on all of it when --data is a plain "
                                   "class folder (new photos). Classes are matched by name.")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--data", required=True, help="same forms as for train")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--which", default="best", type=_which, help="best, latest, or an epoch number")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from .evaluate import evaluate_checkpoint
    from .train.metrics import format_report

    test = evaluate_checkpoint(args.checkpoint, args.data, args.batch_size, args.which, args.data_dir)
    # per_class is keyed in the checkpoint's class order: no need to load the checkpoint a second time
    print(json.dumps(test) if args.json else format_report(test, list(test["per_class"])))
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--which", default="best", type=_which, help="best, latest, or an epoch number")
    p.add_argument("--top-k", type=_positive_int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=_predict)


def _predict(args) -> int:
    from .data.preprocess import ImageError
    from .predict import NonFiniteOutputError, Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, args.which)
    status = 0
    width = max(len(p) for p in args.images)
    for path in args.images:
        try:
            result = predictor.predict([path], top_k=args.top_k)[0]
        except NonFiniteOutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (ImageError, OSError) as e:
            status = 1
            print(json.dumps({"image": path, "error": str(e)}) if args.json else f"{path:<{width}}  error: {e}")
            continue
        if args.json:
            print(json.dumps({"image": path, **result}))
        else:
            top = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top_k"])
            print(f"{path:<{width}}  {result['label']:<10}  {top}")
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's informational lines are not for users
    parser = _Parser(prog="jaxnets", description="Classic image classifiers in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    for extra in ("service_cli", "bench"):  # optional groups of subcommands
        try:
            module = __import__(f"jaxnets.{extra}", fromlist=["add_parser"])
        except ImportError:
            continue
        module.add_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # a mistake in what was asked for: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (a file error with its path), never a trace."""
    if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e.strerror or ""):
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
