"""Checkpoints with broken weights, written through the package's own checkpoint API (for the service tests)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax

from jaxnets.checkpoint import Checkpoints, find_checkpoint_dir, monitor_mode
from jaxnets.inference import Predictor, read_card
from jaxnets.train import create_state


def save_changed_weights(run: Path, out: Path, change: Callable[[str, np.ndarray], np.ndarray]) -> Path:
    """Copy the run directory `run` to `out` and save one more step there, marked best, whose params are
    `change(path, array)` of the best step's (path like "Conv_0/kernel"). Returns `out`."""
    shutil.copytree(run, out)
    directory = find_checkpoint_dir(out)
    card = read_card(directory)
    monitor = card.monitor
    predictor = Predictor.from_checkpoint(directory)
    _, state = create_state(card.model, card.num_outputs, card.model_options, card.input_shape, optax.sgd(0.1), 0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: change("/".join(str(getattr(k, "key", k)) for k in path), np.asarray(a)),
        predictor.variables["params"])
    checkpoints = Checkpoints(directory, monitor)
    try:
        step = checkpoints.latest_step() + 1
        best = 1e9 if monitor_mode(monitor) == "max" else -1e9
        state = state.replace(params=params, batch_stats=predictor.variables.get("batch_stats", {}))
        checkpoints.save(step, state, {"epoch": step, "history": []}, {monitor: best},
                         extra_files={"model_card.json": json.dumps(card.to_dict()).encode()})
    finally:
        checkpoints.close()
    return out


def all_nan(path: str, array: np.ndarray) -> np.ndarray:
    """Every weight NaN: no input gives a finite answer."""
    return np.full_like(array, np.nan)


def infinite_first_kernel(path: str, array: np.ndarray) -> np.ndarray:
    """The first convolution's kernel +inf: a black image (standardised to negative values, then ReLU) still
    gives finite probabilities, so the model passes its warm-up; any bright pixel gives NaN."""
    return np.full_like(array, np.inf) if path == "Conv_0/kernel" else array
