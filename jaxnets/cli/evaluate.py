"""`jaxnets evaluate`: a checkpoint scored on labelled data (and, with --report, its report.html)."""

from __future__ import annotations

import json

from ..options import positive_int, which

__all__ = ["add_evaluate"]


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate the best checkpoint on labelled data",
                       description="Evaluates on the test split of --data, or on all of it when --data is a plain "
                                   "class folder (new photos). Classes are matched by name.")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--data", required=True, help="same forms as for train")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--which", default="best", type=which, help="best, latest, or an epoch number")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write report.html (curves, confusion matrix, per-class scores, most-confused pairs, "
                        "top losses with Grad-CAM) and its figures into DIR; never over existing files")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from ..inference.evaluate import evaluate_checkpoint
    from ..inference.metrics import format_report

    test = evaluate_checkpoint(args.checkpoint, args.data, args.batch_size, args.which, args.data_dir, args.report)
    # per_class is keyed in the checkpoint's class order: no need to load the checkpoint a second time
    print(json.dumps(test) if args.json else format_report(test, list(test["per_class"])))
    return 0
