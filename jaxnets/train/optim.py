"""Optimizers and learning-rate schedules by name, all from optax."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import optax
from optax import contrib

from ..models.layers import choose

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "plateau")


def _option(default: Any, help: str, choices: Callable[[], Any] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "cli": True})


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule; each field is a `jaxnets train` option."""

    optimizer: str = _option("adam", "optimizer", choices=lambda: OPTIMIZERS)
    lr: float = _option(1e-3, "peak learning rate")
    schedule: str = _option("constant", "learning-rate schedule", choices=lambda: SCHEDULES)
    momentum: float = _option(0.9, "momentum of the momentum optimizer")
    nesterov: bool = _option(False, "Nesterov momentum (momentum optimizer)")
    weight_decay: float = _option(0.0, "weight decay (decoupled for adamw)")
    clip_norm: float | None = _option(None, "clip gradients to this global norm")
    warmup_epochs: float = _option(1.0, "warm-up epochs of warmup_cosine")
    step_epochs: tuple[int, ...] = _option((), "epochs where the step schedule multiplies lr by --step-factor "
                                               "(default: at 1/3 and 2/3 of the run)")
    step_factor: float = _option(0.1, "factor of the step schedule")
    plateau_patience: int = _option(2, "epochs without a lower loss before the plateau schedule cuts lr")
    plateau_factor: float = _option(0.5, "factor of the plateau schedule")

    def validate(self) -> None:
        """Refuse values that would train nothing or diverge by construction, with the option's name."""
        choose({o: o for o in OPTIMIZERS}, self.optimizer, "optimizer")
        choose({s: s for s in SCHEDULES}, self.schedule, "schedule")
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", "a positive number", self.lr)
        _check(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "≥ 0", self.weight_decay)
        _check(self.clip_norm is None or (math.isfinite(self.clip_norm) and self.clip_norm > 0), "clip_norm",
               "a positive number", self.clip_norm)
        _check(math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0, "warmup_epochs", "≥ 0",
               self.warmup_epochs)
        _check(0 < self.step_factor <= 1 and 0 < self.plateau_factor < 1, "step_factor/plateau_factor",
               "in (0, 1]", (self.step_factor, self.plateau_factor))
        _check(all(int(e) >= 1 for e in self.step_epochs), "step_epochs", "epochs ≥ 1", self.step_epochs)
        _check(self.plateau_patience >= 0, "plateau_patience", "≥ 0", self.plateau_patience)
        if self.nesterov and self.optimizer != "momentum":
            raise ValueError(f"nesterov applies to the momentum optimizer only, not to {self.optimizer!r}")


def _check(ok: bool, name: str, what: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def make_schedule(cfg: OptimConfig, steps_per_epoch: float, epochs: int) -> Callable[[int], float]:
    """The learning rate by optimizer update; `steps_per_epoch` is updates per epoch (fractional with gradient
    accumulation: batches / K)."""
    total = max(1, math.ceil(steps_per_epoch * epochs))
    choose({s: s for s in SCHEDULES}, cfg.schedule, "schedule")
    if cfg.schedule in ("constant", "plateau"):
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, total)
    if cfg.schedule == "warmup_cosine":
        warmup = min(total - 1, max(1, int(cfg.warmup_epochs * steps_per_epoch)))
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total)
    boundaries = cfg.step_epochs or tuple(sorted({max(1, epochs // 3), max(1, 2 * epochs // 3)}))
    return optax.piecewise_constant_schedule(
        cfg.lr, {round(int(e) * steps_per_epoch): cfg.step_factor for e in boundaries})


@dataclass(frozen=True)
class FineTune:
    """A pretrained start: the head trains alone for `freeze_epochs`, then the backbone too at `backbone_lr_mult`
    times the head's learning rate (0: the backbone never trains, and stays in inference mode throughout)."""

    freeze_epochs: int = 1
    backbone_lr_mult: float = 0.1

    def head_only(self, epoch: int) -> bool:
        """Whether `epoch` (0-based) trains the head alone."""
        return epoch < self.freeze_epochs or not self.backbone_lr_mult


def make_optimizer(cfg: OptimConfig, steps_per_epoch: int, epochs: int, finetune: FineTune | None = None,
                   accumulate: int = 1) -> tuple[optax.GradientTransformationExtraArgs, Callable[[int], float]]:
    """(optimizer, schedule of the head): one optimizer over all parameters, or, with `finetune`, the one of
    `finetune_optimizer`. With `accumulate` > 1 the optimizer is optax.MultiSteps: gradients averaged over that
    many batches, one update (and one schedule step) per group; the schedule returned takes batch steps."""
    if finetune is None and accumulate > 1:
        tx, schedule = _single_optimizer(cfg, steps_per_epoch / accumulate, epochs)
        return optax.MultiSteps(tx, every_k_schedule=accumulate), lambda step: schedule(step // accumulate)
    if finetune is None:
        return _single_optimizer(cfg, steps_per_epoch, epochs)
    tx, _, schedule = finetune_optimizer(cfg, steps_per_epoch, epochs, finetune)
    return tx, schedule


def finetune_optimizer(cfg: OptimConfig, steps_per_epoch: int, epochs: int, finetune: FineTune
                       ) -> tuple[optax.GradientTransformationExtraArgs, optax.GradientTransformationExtraArgs,
                                  Callable[[int], float]]:
    """(optimizer, its head part, schedule of the head).

    The optimizer is [global-norm clipping,] the head's optimizer masked to the head, the backbone's masked to
    the rest, chained: one state structure whatever the phase or the multiplier, so a run resumes across the
    phase change. The head part is the same chain without the backbone's half: a frozen step updates
    `state[:-1]` with it and leaves `state[-1]` (the backbone's moments and step count) as it is. The backbone's
    learning rate is the head's schedule times the multiplier, in step with it: its step count starts with its
    training, so its schedule is shifted by the frozen steps."""
    from ..models import head_mask

    head_schedule = make_schedule(cfg, steps_per_epoch, epochs)
    offset, mult = finetune.freeze_epochs * steps_per_epoch, float(finetune.backbone_lr_mult)
    backbone_schedule = lambda count: mult * head_schedule(count + offset)  # noqa: E731
    head_tx, _ = _single_optimizer(cfg, steps_per_epoch, epochs, head_schedule, clip=False)
    backbone_tx, _ = _single_optimizer(cfg, steps_per_epoch, epochs, backbone_schedule, clip=False)
    clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    head_half = optax.masked(head_tx, head_mask)
    backbone_half = optax.masked(backbone_tx, lambda params: head_mask(params, head=False))
    return optax.chain(*clip, head_half, backbone_half), optax.chain(*clip, head_half), head_schedule


def _single_optimizer(cfg: OptimConfig, steps_per_epoch: float, epochs: int,
                      schedule: Callable[[int], float] | None = None, clip: bool = True
                      ) -> tuple[optax.GradientTransformationExtraArgs, Callable[[int], float]]:
    """(optimizer, schedule). With "plateau", the optimizer also scales updates by
    optax.contrib.reduce_on_plateau, fed the training loss averaged over each epoch."""
    choose({o: o for o in OPTIMIZERS}, cfg.optimizer, "optimizer")
    schedule = schedule or make_schedule(cfg, steps_per_epoch, epochs)
    if cfg.optimizer == "sgd":
        base = optax.sgd(schedule)
    elif cfg.optimizer == "momentum":
        base = optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.optimizer == "adam":
        base = optax.adam(schedule)
    elif cfg.optimizer == "adamw":
        base = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        base = optax.rmsprop(schedule)
    parts = []
    if clip and cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.weight_decay and cfg.optimizer != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(base)
    if cfg.schedule == "plateau":
        parts.append(contrib.reduce_on_plateau(
            factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            accumulation_size=max(1, round(steps_per_epoch))
        ))
    return optax.chain(*parts), schedule


def current_lr(schedule: Callable[[int], float], opt_state, step: int) -> float:
    """The learning rate in force at `step`, including a reduce-on-plateau scale if there is one (the first found:
    the head's, when a fine-tune's backbone has one too). Found by type: BatchNorm params are called "scale" too."""
    lr = float(schedule(step))
    is_plateau = lambda x: isinstance(x, contrib.ReduceLROnPlateauState)  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=is_plateau):
        if is_plateau(node):
            return lr * float(node.scale)
    return lr
