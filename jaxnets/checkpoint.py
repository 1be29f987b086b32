"""Checkpoints with orbax: the latest (for resume) and the best by a metric, plus the model card.

A checkpoint directory holds orbax steps (one per epoch) and `model_card.json`. Each step has three
items: "model" (params + batch_stats: all that inference needs), "train" (optimizer state, step, rng)
and "meta" (epoch, history). `Predictor` restores "model" alone, so it needs no optimizer or dataset.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

MODEL_CARD = "model_card.json"


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
        if (candidate / MODEL_CARD).is_file():
            return candidate
    raise FileNotFoundError(f"no {MODEL_CARD} in {path} or {path / 'checkpoints'}: not a jaxnets checkpoint")


def read_model_card(path: str | Path) -> dict[str, Any]:
    return json.loads((find_checkpoint_dir(path) / MODEL_CARD).read_text())


def write_model_card(directory: str | Path, card: dict[str, Any]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MODEL_CARD + ".tmp")
    tmp.write_text(json.dumps({**card, "versions": versions()}, indent=2))
    tmp.replace(directory / MODEL_CARD)


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
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "train", "meta"))

    def save(self, step: int, state, meta: dict, metrics: dict) -> None:
        model = {"params": state.params, "batch_stats": state.batch_stats}
        train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta),
        ), metrics=metrics)
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def resolve(self, which: str | int) -> int:
        step = {"best": self.best_step, "latest": self.latest_step}[which]() if isinstance(which, str) else which
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    def restore_state(self, step: int, template):
        """The full TrainState at `step`, restored onto the structure (and shardings) of `template`."""
        model_t = {"params": template.params, "batch_stats": template.batch_stats}
        train_t = {"opt_state": template.opt_state, "step": template.step, "rng": template.rng}
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
        got = self.manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template)))
        return got.model, step

    def close(self) -> None:
        self.manager.close()
