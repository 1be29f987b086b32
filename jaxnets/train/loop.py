"""fit(): epochs of training and validation, the best and latest checkpoints, resume, early stopping,
and the final test report. Everything a run writes lands in `config.out`:

  config.json  history.json  history.csv  curves.png  metrics.json  checkpoints/{<epoch>/, model_card.json}
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..checkpoint import Checkpoints, write_model_card
from ..data.augment import get_augment
from ..data.loader import DEFAULT_MEMORY_BUDGET, Loader
from ..data.preprocess import PreprocessSpec
from ..data.sources import Splits, load_dataset
from ..models import get_entry
from .metrics import format_report, means, per_class_report
from .optim import OptimConfig, current_lr, make_optimizer
from .state import create_state
from .steps import StepConfig, make_eval_step, make_train_step

log = logging.getLogger("jaxnets.train")

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "seconds")


class NonFiniteLossError(RuntimeError):
    """Training diverged. The checkpoints on disk are the last good ones."""


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved as config.json; `resume` reads the same run back."""

    model: str = "lenet5"
    data: str = "digits"
    out: str = "runs/latest"
    model_options: dict[str, Any] = field(default_factory=dict)
    size: int | None = None  # None: the model's default input (registry)
    channels: int | None = None
    resize: str = "stretch"
    normalize: str | None = None
    val_split: float = 0.1
    test_split: float = 0.1
    labels: list[str] | None = None
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: str = "auto"  # auto (binary BCE for 2 classes, else softmax CE) | bce | softmax
    label_smoothing: float = 0.0
    augment: str = "none"
    dtype: str = "float32"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # start afresh in an `out` that already holds checkpoints (they are deleted)
    patience: int | None = None
    min_delta: float = 0.0
    monitor: str = "val_accuracy"
    quiet: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def preprocess_spec(self) -> PreprocessSpec:
        entry = get_entry(self.model)
        size = self.size or entry.size
        return PreprocessSpec(size, size, self.channels or entry.channels, self.resize,
                              self.normalize or entry.normalize)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        optim = d.pop("optim", {}) or {}
        optim = {**optim, "step_epochs": tuple(optim.get("step_epochs", ()))}
        return cls(**d, optim=OptimConfig(**optim))


@dataclass
class FitResult:
    out: Path
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    best_epoch: int


def _binary(cfg: TrainConfig, num_classes: int) -> bool:
    if cfg.loss not in ("auto", "bce", "softmax"):
        raise ValueError(f"unknown loss {cfg.loss!r}; choose one of: auto, bce, softmax")
    if cfg.loss == "bce" and num_classes != 2:
        raise ValueError(f"loss 'bce' needs exactly 2 classes, the data has {num_classes}")
    return cfg.loss == "bce" or (cfg.loss == "auto" and num_classes == 2)


# one dispatch per step for the running metric sums, instead of one per metric
_add_sums = jax.jit(lambda total, sums: jax.tree.map(jnp.add, total, sums))


def evaluate_loader(eval_step, state, loader: Loader) -> dict[str, Any]:
    """Sum the eval step's metric sums over a whole split; means computed once, at the end."""
    total = None
    for batch in loader.epoch(0):
        sums = eval_step(state, batch)
        total = sums if total is None else _add_sums(total, sums)
    total = jax.device_get(total)
    return {**means(total), "confusion": np.asarray(total["confusion"])}


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1))
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    _plot(out / "curves.png", history)


def _plot(path: Path, history: list[dict[str, float]]) -> None:
    """Loss and accuracy per epoch, train and validation: the classic course plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        if any(h.get(f"val_{key}") is not None for h in history):
            ax.plot(epochs, [h.get(f"val_{key}") for h in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class _Best:
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


def fit(cfg: TrainConfig, splits: Splits | None = None) -> FitResult:
    """Train `cfg.model` on `cfg.data` (or the given splits); see the module docstring for what is written."""
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.exists() and not cfg.resume:  # refuse before writing anything into someone else's run
        if not cfg.overwrite and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
            raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass resume to continue that run, "
                                  "overwrite to start it again, or choose another output directory")
        shutil.rmtree(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=list))
    quiet = cfg.quiet or not sys.stderr.isatty()
    splits = splits or load_dataset(cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
                                    labels=cfg.labels, data_dir=cfg.data_dir)
    classes = list(splits.classes)
    binary = _binary(cfg, len(classes))
    spec = cfg.preprocess_spec()

    loader = lambda ds, shuffle: Loader(ds, spec, cfg.batch_size, shuffle=shuffle, seed=cfg.seed,  # noqa: E731
                                        memory_budget=cfg.memory_budget, progress=not quiet)
    train_loader = loader(splits.train, True)
    val_loader = loader(splits.val, False) if len(splits.val) else None
    test_loader = loader(splits.test, False) if len(splits.test) else None
    if val_loader is None and cfg.monitor.startswith("val_"):
        raise ValueError("monitoring a validation metric needs a validation split (val_split > 0 or a val folder)")

    tx, schedule = make_optimizer(cfg.optim, train_loader.steps_per_epoch, cfg.epochs)
    model_options = {**cfg.model_options, "dtype": cfg.dtype}
    num_outputs = 1 if binary else len(classes)
    model, state = create_state(cfg.model, num_outputs, model_options, spec.shape, tx, cfg.seed, train_loader.mesh)
    step_cfg = StepConfig(spec, len(classes), binary, cfg.label_smoothing, get_augment(cfg.augment))
    train_step, eval_step = make_train_step(model, tx, step_cfg), make_eval_step(model, step_cfg)

    checkpoints = Checkpoints(ckpt_dir, cfg.monitor)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if cfg.resume and checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore_state(checkpoints.latest_step(), state)
        history, start_epoch = meta["history"], int(meta["epoch"])
        log.info("resumed %s at epoch %d", out, start_epoch)

    card = {
        "model": cfg.model, "model_options": model_options, "num_outputs": num_outputs, "binary": binary,
        "classes": classes, "preprocess": spec.to_dict(), "input_shape": list(spec.shape),
        "monitor": cfg.monitor, "train_config": cfg.to_dict(),
    }
    best = _Best(checkpoints.mode, cfg.min_delta)
    for h in history:  # a resumed run replays its history: same best, same patience count
        best.update(h[cfg.monitor], h["epoch"])
    write_model_card(ckpt_dir, {**card, "best": {"epoch": best.epoch, "metric": cfg.monitor, "value": best.value}})

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience is not None and best.waited >= cfg.patience:
            break
        t0 = time.perf_counter()
        total, losses = None, []
        bar = tqdm(train_loader.epoch(epoch), total=train_loader.steps_per_epoch, disable=quiet, leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for batch in bar:
            state, sums = train_step(state, batch)
            losses.append(sums["loss_sum"])
            total = sums if total is None else _add_sums(total, sums)
        train = means(jax.device_get(total))
        seconds = time.perf_counter() - t0
        if not np.isfinite(train["loss"]):
            step_losses = np.asarray(jax.device_get(jnp.stack(losses)))
            bad = int(np.flatnonzero(~np.isfinite(step_losses))[0])
            raise NonFiniteLossError(
                f"loss became {step_losses[bad]} at epoch {epoch + 1}, step {bad + 1} of "
                f"{train_loader.steps_per_epoch} (global step {epoch * train_loader.steps_per_epoch + bad + 1}); "
                f"try a lower learning rate. Last good checkpoint: {checkpoints.latest_step() or 'none'} in {ckpt_dir}"
            )
        val = evaluate_loader(eval_step, state, val_loader) if val_loader else {"loss": None, "accuracy": None}
        row = {
            "epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "lr": current_lr(schedule, state.opt_state, int(state.step) - 1),
            "images_per_s": len(train_loader) / seconds, "seconds": seconds,
        }
        history.append(row)
        best.update(row[cfg.monitor], epoch + 1)
        checkpoints.save(epoch + 1, state, {"epoch": epoch + 1, "history": history}, {cfg.monitor: row[cfg.monitor]})
        write_model_card(ckpt_dir, {**card, "best": {"epoch": best.epoch, "metric": cfg.monitor, "value": best.value}})
        _write_history(out, history)
        if not cfg.quiet:
            val_txt = f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if val_loader else ""
            print(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                  f"acc {row['train_accuracy']:.4f}{val_txt}  lr {row['lr']:.2e}  "
                  f"{row['images_per_s']:,.0f} img/s  {seconds:.1f}s", file=sys.stderr)

    # the final report comes from the best checkpoint, restored, exactly as a user would load it
    best_step = checkpoints.best_step()
    best_state, _ = checkpoints.restore_state(best_step, state)
    metrics: dict[str, Any] = {"best": {"epoch": best_step, "metric": cfg.monitor, "value": best.value},
                               "classes": classes}
    if test_loader is not None:
        test = evaluate_loader(eval_step, best_state, test_loader)
        metrics["test"] = {
            "accuracy": test["accuracy"], "loss": test["loss"],
            "confusion_matrix": test["confusion"].astype(int).tolist(),
            "per_class": per_class_report(test["confusion"], classes),
        }
        if not cfg.quiet:
            print(format_report(metrics["test"], classes), file=sys.stderr)
    metrics["skipped"] = [{"path": p, "reason": r} for p, r in splits.skipped]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(ckpt_dir, {**card, "best": metrics["best"], "test": {
        k: metrics["test"][k] for k in ("accuracy", "loss")} if "test" in metrics else None})
    checkpoints.close()
    return FitResult(out, history, metrics, best_step)
