"""A checkpoint's files on disk, checked without JAX: where the card is, the per-step checksums, no links.

Orbax does not notice flipped bytes inside its array files (they restore as NaN weights), so every step
holds `jaxnets_checksums.json` (size + SHA-256 of each of its files), written right after the step is
saved and verified before every restore and before packaging. Links and special files inside a
checkpoint are refused, never followed: a link to a private file or to /dev/zero must not end up in a
model store or fill the disk. This module imports no JAX so that the service's front process can verify
a packaged model before anything starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_CARD = "model_card.json"
CHECKSUMS = "jaxnets_checksums.json"

class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: a file missing, truncated or changed, a link, a special file."""


def find_checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory or its checkpoints/ folder; return the folder holding model_card.json."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / MODEL_CARD).is_symlink():
            raise CheckpointError(f"{candidate / MODEL_CARD} is a symbolic link; refusing to follow it")
        if (candidate / MODEL_CARD).is_file():
            return candidate
    raise FileNotFoundError(f"no {MODEL_CARD} in {path} or {path / 'checkpoints'}: not a jaxnets checkpoint")


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


def _step_files(step_dir: Path) -> dict[str, Path]:
    """{relative path: path} of a step's files but its own manifest (and the manifest's temporary file)."""
    own = {CHECKSUMS, CHECKSUMS + ".tmp"}
    return {rel: p for p in _files(step_dir) if (rel := p.relative_to(step_dir).as_posix()) not in own}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (checkpoints and downloaded weights alike)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(step_dir: str | Path) -> None:
    """Record size and SHA-256 of every file of one saved step, inside the step (it travels with it)."""
    step_dir = Path(step_dir)
    files = {rel: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for rel, p in sorted(_step_files(step_dir).items())}
    tmp = step_dir / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    tmp.replace(step_dir / CHECKSUMS)


def recorded_files(step_dir: Path) -> dict[str, dict[str, Any]]:
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
    recorded = recorded_files(step_dir)
    found = _step_files(step_dir)
    for name in sorted(set(recorded) - set(found)):
        raise CheckpointError(f"{step_dir / name} is missing from the checkpoint")
    for name in sorted(set(found) - set(recorded)):
        raise CheckpointError(f"{found[name]} was not written with this checkpoint; refusing to use it")
    for name, want in sorted(recorded.items()):
        size = found[name].stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{found[name]} is {size:,} bytes, {want['bytes']:,} at saving: truncated or changed")
        if hashes and sha256_file(found[name]) != want["sha256"]:
            raise CheckpointError(f"{found[name]} is corrupted: its SHA-256 differs from the one recorded at saving")


def verify_packaged(model_dir: str | Path, step: int) -> None:
    """A packaged model (`jaxnets package`): its step verified, and its model card equal to the copy the step
    holds under its checksums (a card edited or damaged in the store is caught like any weight file)."""
    model_dir = Path(model_dir)
    verify_step(model_dir / str(step))
    card, copy = model_dir / MODEL_CARD, model_dir / str(step) / MODEL_CARD
    if not copy.is_file():
        raise CheckpointError(f"{copy} is missing: the packaged model cannot be verified (package it again)")
    if card.is_symlink() or card.read_bytes() != copy.read_bytes():
        raise CheckpointError(f"{card} differs from the card packaged with the model: changed or damaged")
