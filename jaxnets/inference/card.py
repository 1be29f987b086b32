"""ModelCard: the contract between training and every use of a checkpoint (predict, evaluate, package,
the service). Frozen, versioned, validated when read; `read_card` and `write_card` are its only reader and
writer. JAX-free, so the service's front process can read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..data.preprocess import PreprocessSpec
from ..integrity import MODEL_CARD, CheckpointError, find_checkpoint_dir, recorded_files

CARD_VERSION = 1
MAX_CARD_BYTES = 16 * 1024 * 1024  # a model card is a few kB; a bigger "card" is not one
MONITORS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")  # what picks the best checkpoint


def _freeze(value: Any) -> Any:
    """Mappings → read-only mappings, lists → tuples, all the way down: a frozen card is frozen inside too."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The JSON form of a frozen value."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is: the model to rebuild, its classes, the preprocessing its inputs need, and how it
    was chosen and scored. `binary` models have one output (a sigmoid logit) for two classes."""

    model: str
    model_options: Mapping[str, Any]
    classes: tuple[str, ...]
    binary: bool
    preprocess: PreprocessSpec
    monitor: str = "val_accuracy"
    best: Mapping[str, Any] | None = None  # {"epoch", "metric", "value"}
    test: Mapping[str, Any] | None = None  # {"accuracy", "loss"} of the best checkpoint on the test split
    train_config: Mapping[str, Any] | None = None
    packaged_step: int | None = None  # the step a model store holds (set by `jaxnets package`)
    versions: Mapping[str, str] = field(default_factory=dict)
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.classes, (list, tuple)) or not isinstance(self.model_options, Mapping):
            raise CheckpointError("invalid model card: classes must be a list and model_options an object")
        for name in ("model_options", "best", "test", "train_config", "versions"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise CheckpointError(f"invalid model card: {name} must be an object, not {type(value).__name__}")
            object.__setattr__(self, name, _freeze(value) if value is not None else None)
        object.__setattr__(self, "classes", tuple(self.classes))
        self.validate()

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocess.shape

    def validate(self) -> None:
        """Raise CheckpointError for a card no consumer could use, saying what is wrong."""
        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append(f"model must be a model name, not {self.model!r}")
        if not isinstance(self.binary, bool):
            problems.append(f"binary must be true or false, not {self.binary!r}")
        if not isinstance(self.preprocess, PreprocessSpec):
            problems.append("preprocess must be a preprocessing spec")
        if self.monitor not in MONITORS:
            problems.append(f"monitor must be one of {', '.join(MONITORS)}, not {self.monitor!r}")
        if self.packaged_step is not None and (not isinstance(self.packaged_step, int) or self.packaged_step < 1):
            problems.append(f"packaged_step must be an epoch number, not {self.packaged_step!r}")
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            problems.append(f"classes must be non-empty names, not {list(self.classes)!r}")
        elif len(set(self.classes)) != len(self.classes):
            problems.append(f"classes repeat: {list(self.classes)!r}")
        if self.binary and len(self.classes) != 2:
            problems.append(f"a binary model has 2 classes, not {len(self.classes)}")
        if not isinstance(self.card_version, int) or self.card_version > CARD_VERSION:
            problems.append(f"card version {self.card_version!r} is newer than this jaxnets reads ({CARD_VERSION}):"
                            " upgrade jaxnets")
        if problems:
            raise CheckpointError("invalid model card: " + "; ".join(problems))

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "preprocess"}
        return {**d, "preprocess": self.preprocess.to_dict(), "num_outputs": self.num_outputs,
                "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        """The card from its JSON form; derived keys (num_outputs, input_shape) are checked, not trusted."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"invalid model card: a JSON object is expected, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("model", "model_options", "classes", "binary", "preprocess") if k not in d]
        if missing:
            raise CheckpointError(f"invalid model card: {', '.join(missing)} missing")
        if not isinstance(d["classes"], list) or not isinstance(d["preprocess"], Mapping):
            raise CheckpointError("invalid model card: classes must be a list and preprocess an object")
        try:
            spec = PreprocessSpec.from_dict(d["preprocess"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"invalid model card: preprocess: {e}") from None
        try:
            card = cls(**{k: v for k, v in d.items() if k in known and k != "preprocess"}, preprocess=spec)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid model card: {e}") from None
        for key, value in (("num_outputs", card.num_outputs), ("input_shape", list(card.input_shape))):
            if key in d and d[key] != value:
                raise CheckpointError(f"invalid model card: {key} is {d[key]!r} but the classes and preprocessing "
                                      f"give {value!r}")
        return card


def read_card(path: str | Path) -> ModelCard:
    """The card of a run directory, its checkpoints/ folder or a packaged model: a small regular JSON file."""
    card_path = find_checkpoint_dir(path) / MODEL_CARD
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise CheckpointError(f"{card_path} is {card_path.stat().st_size:,} bytes: not a model card")
    try:
        data = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{card_path} is not valid JSON ({e}): the checkpoint is damaged") from None
    try:
        return ModelCard.from_dict(data)
    except CheckpointError as e:
        raise CheckpointError(f"{card_path}: {e}") from None


def write_card(directory: str | Path, card: ModelCard, stamp: bool = True) -> None:
    """Write the card atomically (a reader never sees half a card); `stamp` records this process's library
    versions (training does; packaging keeps the versions the model was trained with)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if stamp:
        card = card.replace(versions=versions())
    tmp = directory / f".{MODEL_CARD}.{os.getpid()}.tmp"
    tmp.write_bytes(card_bytes(card))
    tmp.replace(directory / MODEL_CARD)


def card_bytes(card: ModelCard) -> bytes:
    """The card as the UTF-8 JSON jaxnets writes (one serialisation for the card and its copy in each step)."""
    return json.dumps(card.to_dict(), indent=2, default=list).encode()


def versions() -> dict[str, str]:
    """Library versions recorded in the card (imported here only when a card is written, by training)."""
    import flax
    import jax
    import optax
    import orbax.checkpoint as ocp

    from .._version import __version__

    return {"jaxnets": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax": getattr(ocp, "__version__", ""), "python": platform.python_version()}


CONTRACT = ("model", "model_options", "classes", "binary", "preprocess", "monitor")


def contract(card: ModelCard) -> dict[str, Any]:
    """What must never change under a checkpoint's weights. The compute dtype is not part of it: parameters are
    float32 whatever it is, and a resumed run may change it (its older best step keeps the older dtype)."""
    d = card.to_dict()
    options = {k: v for k, v in d["model_options"].items() if k != "dtype"}
    return {**{k: d[k] for k in CONTRACT}, "model_options": json.loads(json.dumps(options, default=list))}


def check_card_matches_step(card: ModelCard, step_dir: str | Path) -> None:
    """The card a consumer reads must say what the card saved inside the step (under its checksums) says
    about the model, its classes, its preprocessing and its monitor: an edit of model_card.json (renamed
    classes, another normalisation) would otherwise change answers silently."""
    step_dir = Path(step_dir)
    copy = step_dir / MODEL_CARD
    if not copy.exists() and not copy.is_symlink() and MODEL_CARD not in recorded_files(step_dir):
        return  # saved before steps carried the card (early jaxnets 0.1): its checksums are all there is to check
    if copy.is_symlink() or not copy.is_file():
        raise CheckpointError(f"{copy} is missing: the checkpoint of epoch {step_dir.name} cannot be verified")
    saved, now = contract(read_card(step_dir)), contract(card)
    changed = [k for k in CONTRACT if saved[k] != now[k]]
    if changed:
        raise CheckpointError(f"{find_checkpoint_dir(step_dir.parent) / MODEL_CARD} says another {', '.join(changed)} "
                              f"than the card saved with epoch {step_dir.name}: changed or damaged")
