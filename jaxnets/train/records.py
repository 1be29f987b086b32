"""What a run writes besides its checkpoints, each through `RunDir`: config.json and split.json at the start,
history.json/csv and curves.png after each epoch, the model card with its best epoch, and at the end
metrics.json (from the best checkpoint, restored as a user would load it) and report.html."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoints
from ..data.loader import Loader
from ..data.record import split_record
from ..inference.card import ModelCard
from ..inference.card import write_card as _write_card_file
from ..inference.metrics import format_report
from ..inference.predictor import Predictor
from ..inference.scoring import score
from ..report import curves_png, history_csv
from ..report.analysis import per_class_report
from ..runtime.sharding import barrier, gather_json, is_primary, multi_process
from .config import TrainConfig
from .prepare import Prepared
from .rundir import RunDir
from .state import TrainState

log = logging.getLogger("jaxnets.train")

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "seconds")

__all__ = ["HISTORY_FIELDS", "Best", "best_record", "final_report", "score_split", "write_card", "write_history",
           "write_start"]


def score_split(prep: Prepared, state: TrainState, loader: Loader) -> dict[str, Any]:
    """Loss, accuracy and confusion of `state`'s evaluation weights (the average, when kept) on one split."""
    return score(prep.eval_step, state.eval_variables, loader.epoch(0))


def write_history(run: RunDir, history: list[dict[str, float]]) -> None:
    """history.json, history.csv and curves.png, rewritten after every epoch."""
    run.write("history.json", json.dumps(history, indent=1))
    run.write("history.csv", history_csv(history, HISTORY_FIELDS))
    run.write("curves.png", curves_png(history))


@dataclass
class Best:
    """The best monitored value so far, its epoch, and the epochs since it (for early stopping)."""

    mode: str
    min_delta: float
    value: float | None = None
    epoch: int = 0
    waited: int = 0

    def update(self, value: float, epoch: int) -> None:
        better = self.value is None or (value > self.value + self.min_delta if self.mode == "max"
                                        else value < self.value - self.min_delta)
        if better:
            self.value, self.epoch, self.waited = value, epoch, 0
        else:
            self.waited += 1


def best_record(checkpoints: Checkpoints, history: list[dict[str, float]], monitor: str) -> dict[str, Any]:
    """The best checkpoint as orbax keeps it (what `which="best"` loads) and its monitored value: one source,
    so the card and metrics.json always name the epoch a user gets."""
    step = checkpoints.best_step()
    value = next((h[monitor] for h in history if h["epoch"] == step), None)
    return {"epoch": step, "metric": monitor, "value": value}


def write_card(directory: Path, card: ModelCard) -> None:
    """The run's model card, written by process 0 alone (every process holds the same card)."""
    if is_primary():
        _write_card_file(directory, card)


def write_start(run: RunDir, cfg: TrainConfig, prep: Prepared, in_memory: bool) -> None:
    """config.json (what the run is) and split.json (which examples it trains, validates and tests on)."""
    run.write("config.json", json.dumps(cfg.to_dict(), indent=2, default=list))
    if cfg.resume and (run.path / "split.json").is_file():
        return  # the resumed run's split was checked equal to the record (resume.py): the record stays as made
    record = split_record(None if in_memory else cfg.data, prep.splits, val_split=cfg.val_split,
                          test_split=cfg.test_split, seed=cfg.seed, labels=cfg.labels, data_dir=cfg.data_dir)
    run.write("split.json", json.dumps(record, indent=1))


def final_report(cfg: TrainConfig, run: RunDir, prep: Prepared, checkpoints: Checkpoints, state: TrainState,
                  history: list[dict[str, float]]) -> dict[str, Any]:
    """metrics.json from the best checkpoint, restored (and verified) exactly as a user would load it."""
    classes = list(prep.splits.classes)
    best_step = checkpoints.best_step()
    best_state, _ = checkpoints.restore_state(best_step, state)
    metrics: dict[str, Any] = {"best": best_record(checkpoints, history, cfg.monitor), "classes": classes}
    if prep.test_loader is not None:
        test = score_split(prep, best_state, prep.test_loader)
        metrics["test"] = {
            "accuracy": test["accuracy"], "loss": test["loss"],
            "confusion_matrix": test["confusion"].astype(int).tolist(),
            "per_class": per_class_report(test["confusion"], classes),
        }
        if not cfg.quiet and is_primary():
            print(format_report(metrics["test"], classes), file=sys.stderr)
    skipped = [{"path": p, "reason": r} for p, r in prep.splits.skipped]
    # with several processes each one decodes its own rows: the files any of them skipped
    metrics["skipped"] = [dict(t) for t in dict.fromkeys(tuple(sorted(x.items())) for part in gather_json(skipped)
                                                          for x in part)]
    run.write("metrics.json", json.dumps(metrics, indent=2))
    test_card = {k: metrics["test"][k] for k in ("accuracy", "loss")} if "test" in metrics else None
    write_card(run.checkpoints, prep.card.replace(best=metrics["best"], test=test_card))
    if cfg.report:
        try:
            _write_report(cfg, run, prep, best_state, best_step, history)
        except (ValueError, OSError) as e:  # the run is done and saved: a report that fails is a warning
            log.warning("report.html not written: %s", e)
        barrier("jaxnets-report")  # the other processes wait while process 0 scores the split
    return metrics


def _write_report(cfg: TrainConfig, run: RunDir, prep: Prepared, best: TrainState, best_step: int,
                  history: list[dict[str, float]]) -> None:
    """report.html and its figures for the best checkpoint on the test split (the validation split when there is
    none), through a Predictor over the restored variables: what a user of the checkpoint would see."""
    from jax.experimental import multihost_utils

    from ..inference.report import report_files
    from ..models import create_model
    from ..report.html import ReportContext

    splits = prep.splits
    ds, which = (splits.test, "test") if len(splits.test) else (splits.val, "validation")
    variables = best.eval_variables
    variables = multihost_utils.process_allgather(variables, tiled=True) if multi_process() else variables
    if not len(ds) or not is_primary():
        return
    card = prep.card
    predictor = Predictor(create_model(card.model, card.num_outputs, **card.model_options), variables, card,
                          step=best_step)
    context = ReportContext(title=f"{cfg.model} on {cfg.data}",
                            scored=f"the run's {which} split", checkpoint=f"best checkpoint: epoch {best_step}")
    for name, data in report_files(predictor, ds, context, curves_png(history) if history else None).items():
        run.write(name, data)
