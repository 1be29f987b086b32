"""Put a checkpoint into the BentoML model store, and find it again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..inference.card import read_card, write_card
from ..integrity import find_checkpoint_dir, verify_step, write_checksums

DEFAULT_NAME = "jaxnets-classifier"


def package_checkpoint(checkpoint: str | Path, name: str = DEFAULT_NAME, which: str | int = "best") -> str:
    """Store one checkpoint step (default: the best) with its model card; returns the model tag.

    The step is verified against its checksums first (a damaged checkpoint never reaches the store), and
    copied without following links (verification refuses them; `symlinks=True` keeps a link a link even if
    one appeared in between)."""
    from ..extras import require

    bentoml = require("serve", "bentoml")

    from ..checkpoint import Checkpoints  # orbax, JAX: imported here, so the service's front never loads them
    from ..inference.predictor import verified_step

    directory = find_checkpoint_dir(checkpoint)
    card = read_card(directory)
    checkpoints = Checkpoints(directory, card.monitor, read_only=True)
    try:
        step = verified_step(checkpoints, card, which)
    finally:
        checkpoints.close()
    verify_step(directory / str(step))
    metrics = {k: v for k, v in (card.test or {}).items() if isinstance(v, (int, float))}
    with bentoml.models.create(
        name,
        labels={"framework": "jax", "model": card.model},
        metadata={"model": card.model, "classes": list(card.classes), "step": step, "monitor": card.monitor,
                  "best": json.dumps(card.to_dict()["best"]), **{f"test_{k}": v for k, v in metrics.items()}},
    ) as model:
        target = Path(model.path)
        shutil.copytree(directory / str(step), target / str(step), symlinks=True)
        verify_step(target / str(step))  # the copy is whole
        packaged = card.replace(packaged_step=step)
        write_card(target, packaged, stamp=False)
        # a copy of the card inside the step, under its checksums: the service's contract is verified too
        write_card(target / str(step), packaged, stamp=False)
        write_checksums(target / str(step))
    return str(model.tag)
