"""Resuming a run: what may change and what may not, checked against the saved run before anything is written.

A resumed run continues the same model on the same examples: the weights must fit (model, options, classes,
input), the optimizer state must fit (optimizer, clipping, weight decay, schedule), the best checkpoint must
keep meaning the same thing (monitor), and the split must be the same one (data, seed, fractions, labels, and
the examples themselves, by their fingerprints in split.json) — else earlier epochs would have trained on
what is now the test set. Everything else (epochs, lr, patience, augmentation, dtype, …) may change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax

from ..checkpoint import Checkpoints, discard_pending_step
from ..data.dataset import Splits
from ..data.record import data_root, fingerprint, read_record
from ..inference.card import ModelCard, check_card_matches_step, contract, read_card
from ..runtime.sharding import barrier, is_primary
from .config import TrainConfig
from .optim import make_optimizer
from .rundir import RunDir
from .state import TrainState

log = logging.getLogger("jaxnets.train")

SPLIT_OPTIONS = ("data", "seed", "val_split", "test_split", "labels", "data_dir")


def _refuse(run: RunDir, what: str, diffs: str) -> ValueError:
    return ValueError(f"cannot resume {run.path} with a different {what} ({diffs}); use another --out, or "
                      "--overwrite to start that run again")


def _what_weights_fit(card: ModelCard) -> dict[str, Any]:
    """The card's contract (model, options but the dtype, classes, preprocessing) and the input shape; the
    monitor is checked apart, with its own words."""
    fit = contract(card)
    del fit["monitor"]
    return {**fit, "input_shape": json.loads(json.dumps(card.to_dict()["input_shape"]))}


def _check_weights_fit(run: RunDir, saved: ModelCard, card: ModelCard) -> None:
    before, now = _what_weights_fit(saved), _what_weights_fit(card)
    changed = [k for k in before if before[k] != now[k]]
    if changed:
        raise _refuse(run, ", ".join(changed), "; ".join(f"{k}: saved {before[k]!r}, now {now[k]!r}" for k in changed))
    if saved.monitor != card.monitor:
        raise _refuse(run, "--monitor", f"saved {saved.monitor!r}, now {card.monitor!r}: the best checkpoint "
                                        "would change meaning")


def _check_same_split(run: RunDir, saved_config: dict[str, Any], cfg: TrainConfig, splits: Splits) -> None:
    changed = [k for k in SPLIT_OPTIONS if json.dumps(saved_config.get(k)) != json.dumps(getattr(cfg, k))]
    if changed:
        raise _refuse(run, ", ".join(changed), "; ".join(f"{k}: saved {saved_config.get(k)!r}, now "
                                                        f"{getattr(cfg, k)!r}" for k in changed))
    record_path = run.path / "split.json"
    if not record_path.is_file():
        return
    record, root = read_record(record_path), data_root(cfg.data)
    differ = [name for name in ("train", "val", "test")
              if fingerprint(getattr(splits, name), root) != record.get(name, {}).get("fingerprint")]
    if differ:
        raise ValueError(f"cannot resume {run.path}: {cfg.data} changed since the run started (its {', '.join(differ)} "
                         "split(s) differ from split.json), so earlier epochs trained on other examples; use "
                         "another --out, or --overwrite to start again")


def _check_optimizer_fits(run: RunDir, saved_config: dict[str, Any], cfg: TrainConfig, state: TrainState,
                          steps_per_epoch: int) -> None:
    """The saved optimizer state must have the structure the new options build (orbax's own error is a tree)."""
    saved_cfg = TrainConfig.from_dict(saved_config)
    saved_optim = saved_cfg.optim
    if saved_cfg.accumulate != cfg.accumulate:  # the update count and a group in progress would change meaning
        raise _refuse(run, "--accumulate", f"saved {saved_cfg.accumulate!r}, now {cfg.accumulate!r}")
    if (saved_cfg.ema > 0) != (cfg.ema > 0):
        raise _refuse(run, "--ema", f"saved {saved_cfg.ema!r}, now {cfg.ema!r}: the average is on in one and off "
                                    "in the other")
    tx, _ = make_optimizer(saved_optim, steps_per_epoch, saved_cfg.epochs, saved_cfg.finetune(),
                           saved_cfg.accumulate)
    saved_structure = jax.tree.structure(jax.eval_shape(tx.init, state.params))
    if saved_structure != jax.tree.structure(state.opt_state):
        fields = ("optimizer", "clip_norm", "weight_decay", "schedule")
        diffs = "; ".join(f"{k}: saved {getattr(saved_optim, k)!r}, now {getattr(cfg.optim, k)!r}" for k in fields
                          if getattr(saved_optim, k) != getattr(cfg.optim, k))
        if saved_cfg.accumulate != cfg.accumulate:
            change = f"accumulate: saved {saved_cfg.accumulate!r}, now {cfg.accumulate!r}"
            diffs = f"{diffs}; {change}" if diffs else change
        if (saved_cfg.pretrained is None) != (cfg.pretrained is None):
            start = f"pretrained: saved {saved_cfg.pretrained!r}, now {cfg.pretrained!r}"
            diffs = f"{start}; {diffs}" if diffs else start
        raise _refuse(run, "optimizer state", diffs or "its structure differs")


def resume_state(cfg: TrainConfig, run: RunDir, state: TrainState, card: ModelCard, splits: Splits,
                 steps_per_epoch: int) -> tuple[TrainState, list[dict[str, float]], int]:
    """(state, history, epochs done) from the latest checkpoint, checked and verified; the fresh state when
    there is nothing to resume."""
    if not cfg.resume or not any(p.name.isdecimal() for p in run.checkpoints.glob("*")):
        return state, [], 0
    saved = read_card(run.checkpoints)
    _check_weights_fit(run, saved, card)
    saved_config = saved.to_dict()["train_config"] or {}
    _check_same_split(run, saved_config, cfg, splits)
    _check_optimizer_fits(run, saved_config, cfg, state, steps_per_epoch)
    run.claim()  # ours (checked), nothing rewritten
    if is_primary():
        discard_pending_step(run.checkpoints)  # a step a kill left without checksums is never trusted
    barrier("jaxnets-resume")
    checkpoints = Checkpoints(run.checkpoints, card.monitor, read_only=True)
    try:
        latest = checkpoints.latest_step()
        if latest is None:
            return state, [], 0
        check_card_matches_step(saved, checkpoints.step_dir(latest))
        state, meta = checkpoints.restore_state(latest, state)
    finally:
        checkpoints.close()
    log.info("resumed %s at epoch %d", run.path, int(meta["epoch"]))
    return state, meta["history"], int(meta["epoch"])
