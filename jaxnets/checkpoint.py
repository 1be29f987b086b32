"""Checkpoints with orbax: the latest (for resume) and the best by a metric, plus the model card.

A checkpoint directory holds orbax steps (one per epoch) and `model_card.json`. Each step has three
items: "model" (params + batch_stats: all that inference needs), "train" (optimizer state, step, rng)
and "meta" (epoch, history). `Predictor` restores "model" alone, so it needs no optimizer or dataset.

Every saved step gets its checksums right away and is verified before every restore (integrity.py; its
names are re-exported here). The model card is inference/card.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from .integrity import (  # noqa: F401  (re-exported: the checkpoint API in one place)
    CHECKSUMS,
    MODEL_CARD,
    CheckpointError,
    find_checkpoint_dir,
    parse_which,
    verify_step,
    write_checksums,
)
from .runtime.sharding import barrier, is_primary

# orbax moves a step it drops here (one atomic rename) and jaxnets empties it: a kill in the middle of
# deleting a step then leaves a half-deleted folder that is plainly ours, never a half-step among the steps
TRASH = ".jaxnets-trash"
TRASH_TOKEN = ".jaxnets"  # inside TRASH: the folder is jaxnets' own (a user's folder of that name is not emptied)
# the step being saved, written before orbax starts and removed once the step's checksums are written: a step
# without checksums is ours (and untrusted) only when this names it
SAVING = ".jaxnets-saving"

log = logging.getLogger("jaxnets.checkpoint")


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's warnings that a read-only manager is read-only: jaxnets asked for exactly that, and a
    user predicting with a checkpoint should see jaxnets' own words, not library noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("read_only=True" in message or "directory is read only" in message)


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def pending_step(directory: Path) -> int | None:
    """The step whose save was cut short (a kill between orbax's save and its checksums), if any."""
    marker = Path(directory) / SAVING
    if marker.is_symlink() or not marker.is_file():
        return None
    text = marker.read_text().strip()
    return int(text) if text.isdecimal() else None


def discard_pending_step(directory: Path) -> int | None:
    """Move a step whose save was cut short into the trash (its files can never be verified: resuming from it
    would trust bytes nobody checked); the run resumes from the step before. Returns the step discarded."""
    directory = Path(directory)
    step = pending_step(directory)
    if step is not None and (directory / str(step) / CHECKSUMS).is_file():
        (directory / SAVING).unlink()  # killed after the checksums were written: the step is whole
        return None
    if step is not None:
        trash = directory / TRASH
        trash.mkdir(exist_ok=True)
        (trash / TRASH_TOKEN).touch()
        for entry in directory.glob(f"{step}*"):
            if entry.name == str(step) or entry.name.startswith(f"{step}.orbax-checkpoint-tmp"):
                # unique: an earlier kill in the same window may have left one of that name already
                entry.rename(trash / f"{entry.name}.{time.time_ns()}.unverified")
        _take_back_dropped_steps(directory, trash)
        (directory / SAVING).unlink()
        log.warning("epoch %d of %s was cut short before its checksums were written: discarded, resuming from the "
                    "epoch before", step, directory)
    return step


def _take_back_dropped_steps(directory: Path, trash: Path) -> None:
    """Orbax drops the steps the new one supersedes (the previous latest, a former best) into the trash while
    saving it; with that step discarded they are the run's latest and best again. Only whole steps, fully
    hashed, come back."""
    for entry in sorted(trash.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not entry.name.isdecimal() or entry.is_symlink() or not entry.is_dir() or (directory / entry.name).exists():
            continue
        try:
            verify_step(entry, hashes=True)
        except CheckpointError:
            continue
        entry.rename(directory / entry.name)
        log.info("epoch %s of %s, dropped while saving the discarded epoch, is kept again", entry.name, directory)


def monitor_mode(monitor: str) -> str:
    """Losses are minimised, everything else (accuracies) maximised."""
    return "min" if monitor.endswith("loss") else "max"


def _here(template):
    """Shapes without a placement → on this process's first device: a step saved by several processes (another
    topology) restores for inference on one machine."""
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def place(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
        return leaf

    return None if template is None else jax.tree.map(place, template)


class Checkpoints:
    """One orbax CheckpointManager keeping the latest step AND the best step by `monitor`."""

    def __init__(self, directory: str | Path, monitor: str = "val_accuracy", read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        metric = lambda m: m[monitor]  # noqa: E731
        options = ocp.CheckpointManagerOptions(
            best_fn=metric,
            best_mode=self.mode,
            # best_fn + max_to_keep alone would delete the latest step; keep both explicitly
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=1),
                policies.BestN(get_metric_fn=metric, reverse=(self.mode == "min"), n=1),
            ]),
            enable_async_checkpointing=False,
            create=not read_only,
            read_only=read_only,
            **({} if read_only else {"todelete_subdir": TRASH}),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("model", "train", "meta", "ema"))
        if not read_only and is_primary():
            (self.directory / TRASH).mkdir(exist_ok=True)
            (self.directory / TRASH / TRASH_TOKEN).touch()

    def save(self, step: int, state, meta: dict, metrics: dict, extra_files: dict[str, bytes] | None = None) -> None:
        """Save one step, then the `extra_files` beside its items (the model card), then its checksums. With
        several processes, every process takes part in orbax's save (each writes its shards, process 0 the rest)
        and process 0 alone writes jaxnets' own files; the others wait until the step is whole."""
        primary = is_primary()
        if primary:
            _write_atomic(self.directory / SAVING, str(step).encode())
        model = {"params": state.params, "batch_stats": state.batch_stats}
        train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        # the weights' moving average, when the run keeps one, is an item of its own: inference reads it alone
        average = {"ema": ocp.args.StandardSave(state.ema)} if state.ema else {}
        self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta),
            **average), metrics=metrics)
        self.manager.wait_until_finished()
        if primary:
            for name, data in (extra_files or {}).items():
                _write_atomic(self.step_dir(step) / name, data)
            write_checksums(self.step_dir(step))
            (self.directory / SAVING).unlink()
            self.empty_trash()
        barrier(f"jaxnets-saved-{step}")

    def empty_trash(self) -> None:
        """Delete the steps orbax dropped (moved into TRASH), keeping the token that marks the folder ours."""
        trash = self.directory / TRASH
        if not (trash / TRASH_TOKEN).is_file() or trash.is_symlink():
            return
        for entry in trash.iterdir():
            if entry.name != TRASH_TOKEN:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def resolve(self, which: str | int) -> int:
        which = parse_which(which)
        step = {"best": self.best_step, "latest": self.latest_step}[which]() if isinstance(which, str) else which
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            kept = ", ".join(map(str, self.all_steps())) or "none"
            raise FileNotFoundError(f"no checkpoint of epoch {step} in {self.directory}; kept epochs: {kept}")
        return step

    def restore_state(self, step: int, template):
        """The full TrainState at `step`, restored onto the structure (and shardings) of `template`."""
        model_t = {"params": template.params, "batch_stats": template.batch_stats}
        train_t = {"opt_state": template.opt_state, "step": template.step, "rng": template.rng}
        verify_step(self.step_dir(step))
        average = {"ema": ocp.args.StandardRestore(template.ema)} if template.ema else {}
        got = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(model_t), train=ocp.args.StandardRestore(train_t),
            meta=ocp.args.JsonRestore(), **average,
        ))
        state = template.replace(params=got.model["params"], batch_stats=got.model["batch_stats"],
                                 opt_state=got.train["opt_state"], step=got.train["step"], rng=got.train["rng"],
                                 ema=got["ema"] if template.ema else template.ema)
        return state, dict(got.meta)

    def restore_variables(self, which: str | int = "best", template: dict | None = None,
                          item: str = "model") -> tuple[dict, int]:
        """(params/batch_stats, step) for inference from `item` ("model", or "ema" for the weights' average);
        nothing of the optimizer is read."""
        step = self.resolve(which)
        verify_step(self.step_dir(step))
        got = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(_here(template))}))
        return got[item], step

    def close(self) -> None:
        self.manager.close()
