"""Put a checkpoint into the BentoML model store, and find it again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..checkpoint import MODEL_CARD, Checkpoints, find_checkpoint_dir, read_model_card, verify_step

DEFAULT_NAME = "jaxnets-classifier"


def package_checkpoint(checkpoint: str | Path, name: str = DEFAULT_NAME, which: str | int = "best") -> str:
    """Store one checkpoint step (default: the best) with its model card; returns the model tag.

    The step is verified against its checksums first (a damaged checkpoint never reaches the store), and
    copied without following links (verification refuses them; `symlinks=True` keeps a link a link even if
    one appeared in between)."""
    import bentoml

    directory = find_checkpoint_dir(checkpoint)
    card = read_model_card(directory)
    checkpoints = Checkpoints(directory, card.get("monitor", "val_accuracy"), read_only=True)
    try:
        step = checkpoints.resolve(which)
    finally:
        checkpoints.close()
    verify_step(directory / str(step))
    metrics = {k: v for k, v in (card.get("test") or {}).items() if isinstance(v, (int, float))}
    with bentoml.models.create(
        name,
        labels={"framework": "jax", "model": card["model"]},
        metadata={"model": card["model"], "classes": card["classes"], "step": step, "monitor": card.get("monitor"),
                  "best": json.dumps(card.get("best")), **{f"test_{k}": v for k, v in metrics.items()}},
    ) as model:
        target = Path(model.path)
        shutil.copytree(directory / str(step), target / str(step), symlinks=True)
        (target / MODEL_CARD).write_text(json.dumps({**card, "packaged_step": step}, indent=2))
    return str(model.tag)
