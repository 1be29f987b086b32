"""Checkpoints with orbax: the latest (for resume) and the best by a metric, plus the model card.

A checkpoint directory holds orbax steps (one per epoch) and `model_card.json`. Each step has three
items: "model" (params + batch_stats: all that inference needs), "train" (optimizer state, step, rng)
and "meta" (epoch, history). `Predictor` restores "model" alone, so it needs no optimizer or dataset.

Integrity: orbax does not notice flipped bytes inside its array files (they restore as NaN weights), so
every step also holds `jaxnets_checksums.json` (size + SHA-256 of each of its files), written right after
the step is saved and verified before every restore and before packaging. Links and special files inside
a checkpoint are refused, never followed: a link to a private file or to /dev/zero must not end up in a
model store or fill the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

MODEL_CARD = "model_card.json"
CHECKSUMS = "jaxnets_checksums.json"
# orbax moves a step it drops here (one atomic rename) and jaxnets empties it: a kill in the middle of
# deleting a step then leaves a half-deleted folder that is plainly ours, never a half-step among the steps
TRASH = ".jaxnets-trash"
MAX_CARD_BYTES = 16 * 1024 * 1024  # a model card is a few kB; a bigger "card" is not one
CARD_KEYS = ("model", "model_options", "num_outputs", "binary", "classes", "preprocess", "input_shape")

log = logging.getLogger("jaxnets.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: a file missing, truncated or changed, a link, a special file."""


def versions() -> dict[str, str]:
    import flax
    import jax
    import optax

    from . import __version__

    return {"jaxnets": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax": ocp.__version__ if hasattr(ocp, "__version__") else "", "python": platform.python_version()}


def monitor_mode(monitor: str) -> str:
    """Losses are minimised, everything else (accuracies) maximised."""
    return "min" if monitor.endswith("loss") else "max"


def find_checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory or its checkpoints/ folder; return the folder holding model_card.json."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / MODEL_CARD).is_symlink():
            raise CheckpointError(f"{candidate / MODEL_CARD} is a symbolic link; refusing to follow it")
        if (candidate / MODEL_CARD).is_file():
            return candidate
    raise FileNotFoundError(f"no {MODEL_CARD} in {path} or {path / 'checkpoints'}: not a jaxnets checkpoint")


def read_model_card(path: str | Path) -> dict[str, Any]:
    """The model card, checked to be a small regular JSON file holding the keys every consumer reads."""
    card_path = find_checkpoint_dir(path) / MODEL_CARD
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise CheckpointError(f"{card_path} is {card_path.stat().st_size:,} bytes: not a model card")
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{card_path} is not valid JSON ({e}): the checkpoint is damaged") from None
    missing = [k for k in CARD_KEYS if not isinstance(card, dict) or k not in card]
    if missing:
        raise CheckpointError(f"{card_path} lacks {', '.join(missing)}: not a jaxnets model card")
    return card


def write_model_card(directory: str | Path, card: dict[str, Any]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MODEL_CARD + ".tmp")
    tmp.write_text(json.dumps({**card, "versions": versions()}, indent=2))
    tmp.replace(directory / MODEL_CARD)


def parse_which(value: str | int) -> str | int:
    """"best", "latest" or an epoch number (as int or digits); anything else is a ValueError that says so."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value in ("best", "latest"):
        return value
    if isinstance(value, str) and value.isdecimal() and int(value) >= 1:
        return int(value)
    raise ValueError(f"which checkpoint: 'best', 'latest' or an epoch number ≥ 1, not {value!r}")


def _files(root: Path) -> Iterator[Path]:
    """Every regular file under `root`. Links and special files are refused, never followed."""
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink():
                    raise CheckpointError(f"{path} is a symbolic link inside a checkpoint; refusing to follow it")
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    yield path
                else:
                    raise CheckpointError(f"{path} is not a regular file (device, pipe, socket) inside a checkpoint")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(step_dir: str | Path) -> None:
    """Record size and SHA-256 of every file of one saved step, inside the step (it travels with it)."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(_files(step_dir)) if not p.name.startswith(CHECKSUMS)}
    tmp = step_dir / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    tmp.replace(step_dir / CHECKSUMS)


def _recorded(step_dir: Path) -> dict[str, dict[str, Any]]:
    manifest = step_dir / CHECKSUMS
    if manifest.is_symlink() or not manifest.is_file():
        raise CheckpointError(f"{manifest} is missing: {step_dir} cannot be verified (damaged, or not written by "
                              "jaxnets)")
    try:
        files = json.loads(manifest.read_text())["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise CheckpointError(f"{manifest} is damaged: {step_dir} cannot be verified") from None
    return files


def verify_step(step_dir: str | Path, hashes: bool = True) -> None:
    """Raise CheckpointError naming the first file of `step_dir` that is missing, added, truncated or changed.
    `hashes=False` checks names and sizes only (enough to tell our files from someone else's)."""
    step_dir = Path(step_dir)
    if step_dir.is_symlink() or not step_dir.is_dir():
        raise CheckpointError(f"{step_dir} is not a checkpoint folder (missing, or a link)")
    recorded = _recorded(step_dir)
    found = {p.relative_to(step_dir).as_posix(): p for p in _files(step_dir) if not p.name.startswith(CHECKSUMS)}
    for name in sorted(set(recorded) - set(found)):
        raise CheckpointError(f"{step_dir / name} is missing from the checkpoint")
    for name in sorted(set(found) - set(recorded)):
        raise CheckpointError(f"{found[name]} was not written with this checkpoint; refusing to use it")
    for name, want in sorted(recorded.items()):
        size = found[name].stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{found[name]} is {size:,} bytes, {want['bytes']:,} at saving: truncated or changed")
        if hashes and _sha256(found[name]) != want["sha256"]:
            raise CheckpointError(f"{found[name]} is corrupted: its SHA-256 differs from the one recorded at saving")


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
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "train", "meta"))

    def save(self, step: int, state, meta: dict, metrics: dict) -> None:
        model = {"params": state.params, "batch_stats": state.batch_stats}
        train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta),
        ), metrics=metrics)
        self.manager.wait_until_finished()
        write_checksums(self.step_dir(step))
        self.empty_trash()

    def empty_trash(self) -> None:
        """Delete the steps orbax dropped (moved into TRASH): all of them written by this run."""
        shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def complete_checksums(self) -> None:
        """Write the checksums of steps that orbax finished but whose checksums were never written (the
        process was killed between the two). Only for resuming a run directory jaxnets owns."""
        for step in self.all_steps():
            if not (self.step_dir(step) / CHECKSUMS).exists():
                log.warning("step %d of %s has no checksums (interrupted right after saving); recording them now",
                            step, self.directory)
                write_checksums(self.step_dir(step))

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
        got = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(model_t), train=ocp.args.StandardRestore(train_t),
            meta=ocp.args.JsonRestore(),
        ))
        state = template.replace(params=got.model["params"], batch_stats=got.model["batch_stats"],
                                 opt_state=got.train["opt_state"], step=got.train["step"], rng=got.train["rng"])
        return state, dict(got.meta)

    def restore_variables(self, which: str | int = "best", template: dict | None = None) -> tuple[dict, int]:
        """(params/batch_stats, step) for inference; nothing of the optimizer is read."""
        step = self.resolve(which)
        verify_step(self.step_dir(step))
        got = self.manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template)))
        return got.model, step

    def close(self) -> None:
        self.manager.close()
