"""fit(): epochs of training and validation, the best and latest checkpoints, resume, early stopping,
and the final test report. Everything a run writes lands in `config.out`, through `RunDir`:

  .jaxnets-run.json  config.json  split.json  history.json  history.csv  curves.png  metrics.json
  report.html  confusion.png  top_losses.png  tensorboard/
  checkpoints/{<epoch>/, model_card.json}

A start is checked (read-only), prepared (data, model, a resumed state: may fail or be refused) and only
then allowed to write: a refused or failed start leaves the run directory as it was. prepare.py makes the
start, records.py writes the run's files, resume.py restores a resumed state; this module runs the epochs.
"""

from __future__ import annotations

import contextlib
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
from ..data.dataset import Splits
from ..data.loader import Loader
from ..data.record import data_root, fingerprint
from ..inference.card import card_bytes
from ..inference.metrics import means
from ..inference.scoring import add_sums
from ..report.board import Board
from ..runtime.sharding import check_same_everywhere, is_primary, multi_process
from .config import TrainConfig
from .optim import current_lr
from .prepare import Prepared, prepare
from .prepare import _class_weights as _class_weights  # tests/test_recipes.py imports it from here
from .records import Best, best_record, final_report, score_split, write_card, write_history, write_start
from .resume import resume_state
from .rundir import RunDir
from .state import TrainState

log = logging.getLogger("jaxnets.train")

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


def _train_epoch(cfg: TrainConfig, prep: Prepared, state: TrainState, epoch: int, quiet: bool, progress: list,
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


def _epoch_row(prep: Prepared, state: TrainState, epoch: int, train: dict, seconds: float) -> dict[str, float]:
    val = score_split(prep, state, prep.val_loader) if prep.val_loader else {}
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


@dataclass
class _Loop:
    """What the epochs of one run share."""

    cfg: TrainConfig
    run: RunDir
    prep: Prepared
    checkpoints: Checkpoints
    quiet: bool
    stop: threading.Event
    progress: list
    board: Board | None = None  # TensorBoard events (process 0, unless --no-tensorboard)


def _run_epochs(loop: _Loop, state: TrainState, history: list[dict[str, float]], start_epoch: int,
                best: Best) -> TrainState:
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
        write_card(loop.run.checkpoints, prep.card.replace(best=best_record(loop.checkpoints, history, cfg.monitor)))
        write_history(loop.run, history)
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
    prep = prepare(cfg, splits, quiet)
    if multi_process():  # the same examples everywhere, or the processes would train on different data
        root = data_root(cfg.data)
        check_same_everywhere("their data", {"classes": list(prep.splits.classes), **{
            name: fingerprint(getattr(prep.splits, name), root) for name in ("train", "val", "test")}})
    state, history, start_epoch = resume_state(cfg, run, prep.state, prep.card, prep.splits,
                                               prep.train_loader.steps_per_epoch)
    run.claim(cfg.overwrite)
    if on_start is not None:
        on_start()
    write_start(run, cfg, prep, in_memory=splits is not None)
    checkpoints = Checkpoints(run.checkpoints, cfg.monitor)
    best = Best(checkpoints.mode, cfg.min_delta)
    for h in history:  # a resumed run replays its history: same best, same patience count
        best.update(h[cfg.monitor], h["epoch"])
    write_card(run.checkpoints, prep.card.replace(best=best_record(checkpoints, history, cfg.monitor)))
    progress: list = []
    board = Board(run.path, resume=start_epoch > 0) if cfg.tensorboard and is_primary() else None
    try:
        with _stop_on_ctrl_c() as stop:
            state = _run_epochs(_Loop(cfg, run, prep, checkpoints, quiet, stop, progress, board), state, history,
                                start_epoch, best)
            metrics = final_report(cfg, run, prep, checkpoints, state, history)
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
