"""fit(): epochs of training and validation, the best and latest checkpoints, resume, early stopping,
and the final test report. Everything a run writes lands in `config.out`, through `RunDir`:

  .jaxnets-run.json  config.json  split.json  history.json  history.csv  curves.png  metrics.json
  report.html  confusion.png  top_losses.png  tensorboard/
  checkpoints/{<epoch>/, model_card.json}

A start is checked (read-only), prepared (data, model, a resumed state: may fail or be refused) and only
then allowed to write: a refused or failed start leaves the run directory as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import runtime
from ..checkpoint import MODEL_CARD, Checkpoints
from ..data.augment import get_augment
from ..data.dataset import Dataset, Splits
from ..data.loader import Loader
from ..data.mix import MixSpec
from ..data.record import data_root, fingerprint, split_record
from ..data.sources import load_dataset
from ..inference.card import ModelCard, card_bytes
from ..inference.card import write_card as _write_card_file
from ..inference.metrics import format_report, means, per_class_report
from ..inference.predictor import Predictor
from ..inference.scoring import add_sums, score
from ..report import curves_png, history_csv
from ..report.board import Board
from ..runtime.sharding import barrier, check_same_everywhere, gather_json, is_primary, multi_process, replicated
from .config import TrainConfig
from .optim import FineTune, current_lr, finetune_optimizer, make_optimizer
from .resume import resume_state
from .rundir import RunDir
from .state import TrainState, create_state, fresh_ema
from .steps import StepConfig, make_eval_step, make_head_step, make_train_step

log = logging.getLogger("jaxnets.train")

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "seconds")

__all__ = ["FitResult", "NonFiniteLossError", "TrainConfig", "TrainingInterrupted", "fit"]


class NonFiniteLossError(RuntimeError):
    """Training diverged. The checkpoints on disk are the last good ones."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where it stopped and what is on disk to resume from."""


@dataclass
class FitResult:
    out: Path
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    best_epoch: int


def _binary(cfg: TrainConfig, num_classes: int) -> bool:
    if cfg.loss == "bce" and num_classes != 2:
        raise ValueError(f"loss 'bce' needs exactly 2 classes, the data has {num_classes}")
    return cfg.loss == "bce" or (cfg.loss == "auto" and num_classes == 2)


def _score(prep: _Prepared, state: TrainState, loader: Loader) -> dict[str, Any]:
    return score(prep.eval_step, state.eval_variables, loader.epoch(0))


def _write_history(run: RunDir, history: list[dict[str, float]]) -> None:
    run.write("history.json", json.dumps(history, indent=1))
    run.write("history.csv", history_csv(history, HISTORY_FIELDS))
    run.write("curves.png", curves_png(history))


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



def _best_record(checkpoints: Checkpoints, history: list[dict[str, float]], monitor: str) -> dict[str, Any]:
    """The best checkpoint as orbax keeps it (what `which="best"` loads) and its monitored value: one source,
    so the card and metrics.json always name the epoch a user gets."""
    step = checkpoints.best_step()
    value = next((h[monitor] for h in history if h["epoch"] == step), None)
    return {"epoch": step, "metric": monitor, "value": value}


@dataclass
class _Prepared:
    """Everything a run needs before its first step: data, loaders, model, state, steps, the card."""

    splits: Splits
    train_loader: Loader
    val_loader: Loader | None
    test_loader: Loader | None
    state: TrainState
    train_step: Any
    eval_step: Any
    schedule: Any
    card: ModelCard
    head_step: Any = None  # a fine-tune's step while its backbone is frozen
    finetune: FineTune | None = None
    step_config: StepConfig | None = None

    def step_for(self, epoch: int) -> Any:
        """The step of `epoch` (0-based): the head alone while the backbone is frozen, then the whole network."""
        frozen = self.finetune is not None and self.finetune.head_only(epoch)
        return self.head_step if frozen and self.head_step is not None else self.train_step


def _prepare(cfg: TrainConfig, splits: Splits | None, quiet: bool) -> _Prepared:
    """Data, loaders, model, state and jitted steps. Reads data; writes nothing."""
    splits = splits or load_dataset(cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
                                    labels=cfg.labels, data_dir=cfg.data_dir)
    classes = list(splits.classes)
    if len(classes) < 2:
        raise ValueError(f"the data has {len(classes)} class(es) {classes}: a classifier needs at least 2 classes")
    binary = _binary(cfg, len(classes))
    spec = cfg.preprocess_spec()
    if not len(splits.val) and cfg.monitor.startswith("val_"):
        raise ValueError("monitoring a validation metric needs a validation split (val_split > 0 or a val folder)")

    def loader(ds, shuffle):
        if not len(ds):
            return None
        return Loader(ds, spec, cfg.batch_size, shuffle=shuffle, seed=cfg.seed, memory_budget=cfg.memory_budget,
                      progress=not quiet)

    train_loader = loader(splits.train, True)
    if train_loader is None:
        raise ValueError(f"no training images in {cfg.data}")
    _check_every_class_trains(classes, train_loader)
    finetune = cfg.finetune()
    if finetune:
        tx, head_tx, schedule = finetune_optimizer(cfg.optim, train_loader.steps_per_epoch, cfg.epochs, finetune)
    else:
        (tx, schedule), head_tx = make_optimizer(cfg.optim, train_loader.steps_per_epoch, cfg.epochs,
                                                 accumulate=cfg.accumulate), None
    model_options = {**cfg.model_options, "dtype": cfg.dtype}
    num_outputs = 1 if binary else len(classes)
    model, state = create_state(cfg.model, num_outputs, model_options, spec.shape, tx, cfg.seed, train_loader.mesh,
                                ema=cfg.ema > 0)
    if cfg.pretrained and not _will_resume(cfg):
        state = _start_from_pretrained(cfg, state, spec.channels, train_loader.mesh, quiet)
    step_cfg = StepConfig(spec, len(classes), binary, cfg.label_smoothing, get_augment(cfg.augment),
                          MixSpec(cfg.mixup, cfg.cutmix), cfg.erase, _class_weights(cfg, splits.train, classes),
                          cfg.ema)
    card = ModelCard(model=cfg.model, model_options=model_options, classes=tuple(classes), binary=binary,
                     preprocess=spec, monitor=cfg.monitor, train_config=cfg.to_dict())
    head_step = make_head_step(model, head_tx, step_cfg) if finetune and finetune.head_only(0) else None
    if finetune and finetune.backbone_lr_mult and finetune.freeze_epochs >= cfg.epochs:
        log.warning("the backbone stays frozen in all %d epoch(s) of this run (--freeze-epochs %d): only the head "
                    "trains; resume with more --epochs to train the rest", cfg.epochs, finetune.freeze_epochs)
    return _Prepared(splits, train_loader, loader(splits.val, False), loader(splits.test, False), state,
                     make_train_step(model, tx, step_cfg), make_eval_step(model, step_cfg), schedule, card,
                     head_step, finetune, step_cfg)


def _class_weights(cfg: TrainConfig, train: Dataset, classes: list[str]) -> tuple[float, ...] | None:
    """Inverse-frequency weights N / (K × n_c) with --class-weights auto (scikit-learn's "balanced": the mean
    weight over the training examples is 1); a warning when the classes are imbalanced and nothing is done."""
    counts = np.bincount(np.asarray(train.labels), minlength=len(classes)).astype(np.float64)
    if cfg.class_weights == "auto":
        return tuple(float(len(train) / (len(classes) * max(c, 1))) for c in counts)
    if counts.min() > 0 and counts.max() / counts.min() >= 3 and is_primary():
        rare = classes[int(counts.argmin())]
        log.warning("imbalanced classes: %d images of %r against %d of %r; consider --class-weights auto",
                    int(counts.min()), rare, int(counts.max()), classes[int(counts.argmax())])
    return None


def write_card(directory: Path, card: ModelCard) -> None:
    """The run's model card, written by process 0 alone (every process holds the same card)."""
    if is_primary():
        _write_card_file(directory, card)


def _will_resume(cfg: TrainConfig) -> bool:
    """A resumed run restores its own weights: the pretrained ones are not read again (nor downloaded)."""
    ckpt = Path(cfg.out) / "checkpoints"
    return cfg.resume and ckpt.is_dir() and any(p.name.isdecimal() for p in ckpt.iterdir())


def _start_from_pretrained(cfg: TrainConfig, state: TrainState, channels: int, mesh, quiet: bool) -> TrainState:
    """The fresh state with the pretrained weights in place (a new head where the classes differ), reported."""
    from ..pretrained import pretrained_variables

    fresh = jax.device_get(state.variables)
    variables, lines = pretrained_variables(cfg.pretrained, cfg.model, fresh, channels)
    if not cfg.quiet and is_primary():  # shown in logs too (not only on a terminal): what was imported, what is new
        for line in lines:
            print(f"pretrained {line}", file=sys.stderr)
    loaded = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    if state.ema:  # the average starts at the imported weights
        loaded = loaded.replace(ema=fresh_ema(loaded.params, loaded.batch_stats))
    return jax.device_put(loaded, replicated(mesh))


def _check_every_class_trains(classes: list[str], loader: Loader) -> None:
    """A class without a single readable training image cannot be learnt: refuse instead of training a model
    that never predicts it (its files may all have been unreadable, or all carved into val/test)."""
    counts = np.bincount(np.asarray(loader.labels), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise ValueError(f"class(es) {empty} have no readable image in the training split: every file was skipped "
                         "or carved into validation/test; add images, or lower --val-split/--test-split")


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C sets an event that the loop checks at every step boundary, so that a stop never lands inside an
    orbax save, and is never swallowed (Python drops a KeyboardInterrupt raised inside a garbage-collector
    callback, and JAX has one). A second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, None):
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _train_epoch(cfg: TrainConfig, prep: _Prepared, state: TrainState, epoch: int, quiet: bool, progress: list,
                 stop: threading.Event):
    """One epoch of training steps → (state, train means, seconds). `progress` holds the step reached, so that
    an interruption can say where it stopped."""
    t0 = time.perf_counter()
    total, losses = None, []
    loader, train_step = prep.train_loader, prep.step_for(epoch)
    bar = tqdm(loader.epoch(epoch), total=loader.steps_per_epoch, disable=quiet, leave=False,
               desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
    for step, batch in enumerate(bar, 1):
        if stop.is_set():
            raise KeyboardInterrupt
        progress[:] = [epoch + 1, step]
        state, sums = train_step(state, batch)
        losses.append(sums["loss_sum"])
        total = sums if total is None else add_sums(total, sums)
    train = means(jax.device_get(total))
    if not np.isfinite(train["loss"]):
        raise NonFiniteLossError(_divergence(np.asarray(jax.device_get(jnp.stack(losses))), epoch, loader, cfg))
    return state, train, time.perf_counter() - t0


def _divergence(step_losses: np.ndarray, epoch: int, loader: Loader, cfg: TrainConfig) -> str:
    """Where the loss stopped being finite: the first step whose loss is NaN/inf, or, when every step's is
    finite but their sum overflows float32, the epoch itself with the largest step loss."""
    where = f"The checkpoints in {Path(cfg.out) / 'checkpoints'} are the last good ones"
    bad = np.flatnonzero(~np.isfinite(step_losses))
    if not len(bad):
        return (f"loss became inf at epoch {epoch + 1}: its step losses are finite but as large as "
                f"{float(np.max(step_losses)):.3g}, and their sum overflows; try a lower learning rate. {where}")
    step = int(bad[0])
    return (f"loss became {step_losses[step]} at epoch {epoch + 1}, step {step + 1} of {loader.steps_per_epoch} "
            f"(global step {epoch * loader.steps_per_epoch + step + 1}); try a lower learning rate. {where}")


def _epoch_row(prep: _Prepared, state: TrainState, epoch: int, train: dict, seconds: float) -> dict[str, float]:
    val = _score(prep, state, prep.val_loader) if prep.val_loader else {}
    return {
        "epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
        "val_loss": val.get("loss"), "val_accuracy": val.get("accuracy"),
        "lr": current_lr(prep.schedule, state.opt_state, int(state.step) - 1),
        "images_per_s": len(prep.train_loader) / seconds, "seconds": seconds,
    }


def _print_epoch(cfg: TrainConfig, row: dict[str, float]) -> None:
    if cfg.quiet or not is_primary():
        return
    val = f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if row["val_loss"] is not None else ""
    print(f"epoch {row['epoch']:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
          f"{val}  lr {row['lr']:.2e}  {row['images_per_s']:,.0f} img/s  {row['seconds']:.1f}s", file=sys.stderr)


def _final_report(cfg: TrainConfig, run: RunDir, prep: _Prepared, checkpoints: Checkpoints, state: TrainState,
                  history: list[dict[str, float]]) -> dict[str, Any]:
    """metrics.json from the best checkpoint, restored (and verified) exactly as a user would load it."""
    classes = list(prep.splits.classes)
    best_step = checkpoints.best_step()
    best_state, _ = checkpoints.restore_state(best_step, state)
    metrics: dict[str, Any] = {"best": _best_record(checkpoints, history, cfg.monitor), "classes": classes}
    if prep.test_loader is not None:
        test = _score(prep, best_state, prep.test_loader)
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


def _write_report(cfg: TrainConfig, run: RunDir, prep: _Prepared, best: TrainState, best_step: int,
                  history: list[dict[str, float]]) -> None:
    """report.html and its figures for the best checkpoint on the test split (the validation split when there is
    none), through a Predictor over the restored variables: what a user of the checkpoint would see."""
    from jax.experimental import multihost_utils

    from ..models import create_model
    from ..report.analysis import analyse
    from ..report.html import ReportContext, build_report

    splits = prep.splits
    ds, which = (splits.test, "test") if len(splits.test) else (splits.val, "validation")
    variables = best.eval_variables
    variables = multihost_utils.process_allgather(variables, tiled=True) if multi_process() else variables
    if not len(ds) or not is_primary():
        return
    card = prep.card
    predictor = Predictor(create_model(card.model, card.num_outputs, **card.model_options), variables, card,
                          step=best_step)
    analysis = analyse(predictor, ds)
    context = ReportContext(title=f"{cfg.model} on {cfg.data}",
                            scored=f"the run's {which} split", checkpoint=f"best checkpoint: epoch {best_step}")
    for name, data in build_report(predictor, analysis, ds, context, curves_png(history) if history else None).items():
        run.write(name, data)


@dataclass
class _Loop:
    """What the epochs of one run share."""

    cfg: TrainConfig
    run: RunDir
    prep: _Prepared
    checkpoints: Checkpoints
    quiet: bool
    stop: threading.Event
    progress: list
    board: Board | None = None  # TensorBoard events (process 0, unless --no-tensorboard)


def _run_epochs(loop: _Loop, state: TrainState, history: list[dict[str, float]], start_epoch: int,
                best: _Best) -> TrainState:
    """Train, validate, checkpoint and record each epoch; stops early on patience, or after saving on Ctrl-C."""
    cfg, prep = loop.cfg, loop.prep
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience is not None and best.waited >= cfg.patience:
            break
        state, train, seconds = _train_epoch(cfg, prep, state, epoch, loop.quiet, loop.progress, loop.stop)
        row = _epoch_row(prep, state, epoch, train, seconds)
        history.append(row)
        best.update(row[cfg.monitor], epoch + 1)
        card = card_bytes(prep.card)  # the contract, under the step's checksums
        loop.checkpoints.save(epoch + 1, state, {"epoch": epoch + 1, "history": history},
                              {cfg.monitor: row[cfg.monitor]}, extra_files={MODEL_CARD: card})
        write_card(loop.run.checkpoints, prep.card.replace(best=_best_record(loop.checkpoints, history, cfg.monitor)))
        _write_history(loop.run, history)
        if loop.board is not None:
            loop.board.epoch(row)
        _print_epoch(cfg, row)
        if loop.stop.is_set():  # Ctrl-C during validation or saving: the epoch is complete and saved
            loop.progress[:] = [epoch + 1, prep.train_loader.steps_per_epoch]
            raise KeyboardInterrupt
    return state


def _interrupted(progress: list, checkpoints: Checkpoints) -> TrainingInterrupted:
    epoch, step = progress or (0, 0)
    latest = checkpoints.latest_step()
    where = f"in epoch {epoch}, step {step}" if epoch else "before the first step"
    saved = f"the latest checkpoint is epoch {latest} in {checkpoints.directory}" if latest else "no epoch was saved"
    return TrainingInterrupted(f"interrupted {where}; {saved}")


def _write_start(run: RunDir, cfg: TrainConfig, prep: _Prepared, in_memory: bool) -> None:
    """config.json (what the run is) and split.json (which examples it trains, validates and tests on)."""
    run.write("config.json", json.dumps(cfg.to_dict(), indent=2, default=list))
    if cfg.resume and (run.path / "split.json").is_file():
        return  # the resumed run's split was checked equal to the record (resume.py): the record stays as made
    record = split_record(None if in_memory else cfg.data, prep.splits, val_split=cfg.val_split,
                          test_split=cfg.test_split, seed=cfg.seed, labels=cfg.labels, data_dir=cfg.data_dir)
    run.write("split.json", json.dumps(record, indent=1))


def fit(cfg: TrainConfig, splits: Splits | None = None, on_start: Callable[[], None] | None = None) -> FitResult:
    """Train `cfg.model` on `cfg.data` (or the given splits); see the module docstring for what is written.
    `on_start` is called once the start is accepted (data read, a resumed state restored), before epoch one.
    The memory a training process keeps between steps goes back to the system when the run's state is gone."""
    try:
        return _fit(cfg, splits, on_start)
    finally:
        runtime.release_training_memory()


def _fit(cfg: TrainConfig, splits: Splits | None, on_start: Callable[[], None] | None) -> FitResult:
    cfg.validate()
    run = RunDir(cfg.out)
    run.check(cfg.resume, cfg.overwrite)
    quiet = cfg.quiet or not sys.stderr.isatty() or not is_primary()  # one progress bar, process 0's
    prep = _prepare(cfg, splits, quiet)
    if multi_process():  # the same examples everywhere, or the processes would train on different data
        root = data_root(cfg.data)
        check_same_everywhere("their data", {"classes": list(prep.splits.classes), **{
            name: fingerprint(getattr(prep.splits, name), root) for name in ("train", "val", "test")}})
    state, history, start_epoch = resume_state(cfg, run, prep.state, prep.card, prep.splits,
                                               prep.train_loader.steps_per_epoch)
    run.claim(cfg.overwrite)
    if on_start is not None:
        on_start()
    _write_start(run, cfg, prep, in_memory=splits is not None)
    checkpoints = Checkpoints(run.checkpoints, cfg.monitor)
    best = _Best(checkpoints.mode, cfg.min_delta)
    for h in history:  # a resumed run replays its history: same best, same patience count
        best.update(h[cfg.monitor], h["epoch"])
    write_card(run.checkpoints, prep.card.replace(best=_best_record(checkpoints, history, cfg.monitor)))
    progress: list = []
    board = Board(run.path, resume=start_epoch > 0) if cfg.tensorboard and is_primary() else None
    try:
        with _stop_on_ctrl_c() as stop:
            state = _run_epochs(_Loop(cfg, run, prep, checkpoints, quiet, stop, progress, board), state, history,
                                start_epoch, best)
            metrics = _final_report(cfg, run, prep, checkpoints, state, history)
            best_epoch = checkpoints.best_step()
            if board is not None and "test" in metrics:
                board.confusion(np.asarray(metrics["test"]["confusion_matrix"]), metrics["classes"],
                                history[-1]["epoch"] if history else 0)
    except KeyboardInterrupt:
        raise _interrupted(progress, checkpoints) from None
    finally:
        checkpoints.close()
        if board is not None:
            board.close()
    return FitResult(run.path, history, metrics, best_epoch)
