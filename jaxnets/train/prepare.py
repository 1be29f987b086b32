"""A run's start, before anything is written: the data read and split, the loaders, the model and its state
(pretrained weights in place when asked), the jitted steps and the model card. Reads data; writes nothing: a
start that fails here leaves the run directory as it was."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..data.augment import get_augment
from ..data.dataset import Dataset, Splits
from ..data.loader import Loader
from ..data.mix import MixSpec
from ..data.sources import load_dataset
from ..inference.card import ModelCard
from ..runtime.sharding import is_primary, replicated
from .config import TrainConfig
from .optim import FineTune, finetune_optimizer, make_optimizer
from .state import TrainState, create_state, fresh_ema
from .steps import StepConfig, make_eval_step, make_head_step, make_train_step

log = logging.getLogger("jaxnets.train")

__all__ = ["Prepared", "prepare"]


def _binary(cfg: TrainConfig, num_classes: int) -> bool:
    if cfg.loss == "bce" and num_classes != 2:
        raise ValueError(f"loss 'bce' needs exactly 2 classes, the data has {num_classes}")
    return cfg.loss == "bce" or (cfg.loss == "auto" and num_classes == 2)


@dataclass
class Prepared:
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


def prepare(cfg: TrainConfig, splits: Splits | None, quiet: bool) -> Prepared:
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
    return Prepared(splits, train_loader, loader(splits.val, False), loader(splits.test, False), state,
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
