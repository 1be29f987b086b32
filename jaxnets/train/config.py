"""TrainConfig: everything that defines a run, saved as config.json, validated before anything runs."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.augment import PRESETS, get_augment
from ..data.loader import DEFAULT_MEMORY_BUDGET
from ..data.preprocess import NORMALIZATIONS, RESIZE_MODES, PreprocessSpec
from ..inference.card import MONITORS
from ..models import create_model, get_entry, list_models
from ..models.layers import choose
from .optim import FineTune, OptimConfig

LOSSES = ("auto", "bce", "softmax")
CLASS_WEIGHTS = ("none", "auto")
# What `--pretrained` brings for the options not given: a short run with a warm-up, the head at lr and the
# backbone at a tenth of it after one frozen epoch, decoupled weight decay, mirrored crops and mild colour, and
# the photo's centre rather than a stretched photo (ImageNet weights never saw stretched objects).
FINETUNE_RECIPE: dict[str, Any] = {
    "epochs": 6, "batch_size": 32, "resize": "crop", "augment": "classic", "label_smoothing": 0.1,
    "optim": {"optimizer": "adamw", "lr": 1e-3, "schedule": "warmup_cosine", "warmup_epochs": 0.5,
              "weight_decay": 0.01},
}
DTYPES = ("float32", "bfloat16")


def option(default: Any, help: str, choices: Callable[[], Any] | None = None) -> Any:
    """A config field with what the command line needs to know about it: help, choices (from the registries)."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": True})


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved as config.json; `resume` reads the same run back.
    The `jaxnets train` options are generated from these fields (jaxnets/options.py)."""

    model: str = option("lenet5", "model name", choices=list_models)
    data: str = option("digits", "'digits', 'tfds:NAME', or a folder (class folders, train/val/test folders, MNIST "
                                 "IDX files, or one flat folder labelled by file name)")
    out: str = option("runs/latest", "run directory (checkpoints, history, plots, metrics)")
    # mutable defaults are plain dataclass fields (ruff RUF009); model options have flags of their own
    model_options: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    size: int | None = option(None, "input height = width (default: the model's)")
    channels: int | None = option(None, "1 grey, 3 RGB (default: the model's)", choices=lambda: (1, 3))
    resize: str = option("stretch", "stretch to size, shorter side + centre crop, or pad (MNIST 28 → 32)",
                         choices=lambda: RESIZE_MODES)
    normalize: str | None = option(None, "pixel normalisation (default: the model's)", choices=lambda: NORMALIZATIONS)
    val_split: float = option(0.1, "fraction carved out for validation when the data has no val split")
    test_split: float = option(0.1, "fraction carved out for test when the data has no test split")
    labels: list[str] | None = field(default=None, metadata={"help": "labels of a flat folder named by file, e.g. "
                                                                     "cat,dog", "cli": True})
    data_dir: str | None = option(None, "TFDS data directory")
    epochs: int = option(10, "epochs to train")
    batch_size: int = option(64, "examples per step")
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"cli": True})  # its fields are options
    loss: str = option("auto", "auto: one logit + BCE for 2 classes, softmax cross-entropy otherwise",
                       choices=lambda: LOSSES)
    label_smoothing: float = option(0.0, "label smoothing (softmax and one-logit heads)")
    augment: str = option("none", "augmentation preset (run inside the jitted step; trivial = random resized crop, "
                                  "flip and TrivialAugmentWide)", choices=lambda: PRESETS)
    mixup: float = option(0.0, "MixUp: Beta(alpha, alpha) of the mixing weight; 0 = off")
    cutmix: float = option(0.0, "CutMix: Beta(alpha, alpha) of the kept area; 0 = off (with MixUp: one of the two "
                                "per batch, each half of the time)")
    erase: float = option(0.0, "random erasing: probability that an image gets a rectangle of noise")
    ema: float = option(0.0, "decay of an exponential moving average of the weights, evaluated, checkpointed and "
                             "served instead of them (e.g. 0.999); 0 = off")
    accumulate: int = option(1, "accumulate gradients over this many batches before an update (optax.MultiSteps): "
                                "an effective batch of --batch-size × this")
    class_weights: str = option("none", "auto: weigh each class's loss by its inverse frequency (imbalanced data)",
                                choices=lambda: CLASS_WEIGHTS)
    dtype: str = option("float32", "compute dtype (parameters stay float32)", choices=lambda: DTYPES)
    pretrained: str | None = option(None, "start from pretrained weights: a jaxnets run, a .pth/.safetensors file, a "
                                          "URL, torchvision:MODEL or timm:MODEL.TAG (alone, it also brings the "
                                          "fine-tuning recipe: see `jaxnets train --help`)")
    freeze_epochs: int | None = option(None, "with --pretrained: epochs in which only the new head trains, the "
                                             "backbone and its BatchNorm statistics frozen (default 1)")
    backbone_lr_mult: float | None = option(None, "with --pretrained: the backbone's learning rate as a share of "
                                                  "--lr once it trains (default 0.1; 0: only the head ever trains)")
    seed: int = option(0, "seed of the splits, the initialisation, the shuffling and the augmentation")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint, with its saved options "
                                 "(options given now replace them)")
    overwrite: bool = option(False, "start again in an --out holding an earlier jaxnets run (deletes that run's "
                                    "files, and only them)")
    patience: int | None = option(None, "early stopping: epochs without improvement of --monitor")
    min_delta: float = option(0.0, "smallest change of --monitor that counts as an improvement")
    monitor: str = option("val_accuracy", "metric that picks the best checkpoint", choices=lambda: MONITORS)
    quiet: bool = option(False, "no progress bars or per-epoch lines")
    report: bool = option(True, "write report.html (curves, confusion matrix, per-class scores, top losses with "
                                "Grad-CAM) and its figures at the end of the run")
    tensorboard: bool = option(True, "write TensorBoard event files into the run's tensorboard/ folder")
    memory_budget: int = option(DEFAULT_MEMORY_BUDGET, "bytes of decoded images kept in memory; above it, stream")

    @classmethod
    def finetuning(cls, **options: Any) -> TrainConfig:
        """The fine-tuning recipe with `options` over it: what `--pretrained` alone brings. It is FINETUNE_RECIPE
        but where the model's family has its own (train/recipes.py: EfficientNet-Lite's)."""
        from .recipes import finetune_recipe_for

        recipe = finetune_recipe_for(options.get("model", cls.model), FINETUNE_RECIPE)
        optim = dataclasses.replace(OptimConfig(), **{**recipe["optim"], **options.pop("optim", {})})
        top = {k: v for k, v in recipe.items() if k != "optim"}
        return cls(**{**top, **options}, optim=optim)

    @classmethod
    def recommended(cls, model: str = "lenet5", **options: Any) -> TrainConfig:
        """The model family's recipe (train/recipes.py) with `options` over it: what `jaxnets train --model M`
        uses for the options not given. The Python API's plain `TrainConfig(...)` keeps the bare defaults."""
        from .recipes import recipe_for

        recipe = recipe_for(model)
        ours, given = recipe.pop("optim", {}), dict(options.pop("optim", {}))
        if given.get("optimizer", ours.get("optimizer")) != ours.get("optimizer") and "weight_decay" not in given:
            ours.pop("weight_decay", None)  # AdamW's decoupled decay would be a heavy L2 penalty for another one
        optim = dataclasses.replace(OptimConfig(), **{**ours, **given})
        return cls(**{**recipe, "model": model, **options}, optim=optim)

    def finetune(self) -> FineTune | None:
        """The two-phase schedule of a pretrained start (None when the run starts from scratch)."""
        if not self.pretrained:
            return None
        return FineTune(1 if self.freeze_epochs is None else self.freeze_epochs,
                        0.1 if self.backbone_lr_mult is None else self.backbone_lr_mult)

    def preprocess_spec(self) -> PreprocessSpec:
        entry = get_entry(self.model)
        size = self.size or entry.size
        return PreprocessSpec(size, size, self.channels or entry.channels, self.resize,
                              self.normalize or entry.normalize)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first option that cannot work, before any data is read or file written."""
        entry = get_entry(self.model)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.size is not None:
            _positive_int("size", self.size)
            if self.size < entry.min_size:
                raise ValueError(f"size {self.size} is below the smallest input {self.model} can compute on "
                                 f"({entry.min_size}×{entry.min_size})")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        choose({m: m for m in RESIZE_MODES}, self.resize, "resize mode")
        if self.normalize is not None:
            choose(NORMALIZATIONS, self.normalize, "normalisation")
        for name in ("val_split", "test_split", "label_smoothing", "ema"):
            _fraction(name, getattr(self, name))
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 100):
                raise ValueError(f"{name} must be a Beta alpha in [0, 100] (0 = off), got {value!r}")
        if not (isinstance(self.erase, (int, float)) and 0 <= self.erase <= 1):
            raise ValueError(f"erase must be a probability in [0, 1], got {self.erase!r}")
        _positive_int("accumulate", self.accumulate)
        if self.accumulate > 1 and self.pretrained:
            raise ValueError("accumulate applies to runs from scratch; a fine-tune's two-phase optimizer does not "
                             "take it yet: drop --accumulate or --pretrained")
        choose({x: x for x in CLASS_WEIGHTS}, self.class_weights, "class weights")
        if self.val_split + self.test_split >= 1:
            raise ValueError(f"val_split + test_split must leave data to train on, got {self.val_split} + "
                             f"{self.test_split}")
        choose({x: x for x in LOSSES}, self.loss, "loss")
        choose({x: x for x in MONITORS}, self.monitor, "monitor")
        choose({x: x for x in DTYPES}, self.dtype, "dtype")
        get_augment(self.augment)
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be a whole number from 0 to {2**31 - 1}, got {self.seed!r}")
        for name in ("data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must name something, got {getattr(self, name)!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"patience must be a whole number of epochs ≥ 1, got {self.patience!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be ≥ 0, got {self.min_delta!r}")
        _positive_int("memory_budget", self.memory_budget)
        if self.labels is not None and (not all(isinstance(x, str) and x.strip() for x in self.labels)
                                        or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be distinct, non-empty names, got {self.labels!r}")
        create_model(self.model, 2, **self.model_options, dtype=self.dtype)  # options checked, nothing initialised
        self._validate_pretrained()
        if self.resume and self.overwrite:
            raise ValueError("resume continues a run and overwrite deletes it: pass one of them, not both")
        self.optim.validate()
        return self

    def _validate_pretrained(self) -> None:
        if self.pretrained is None:
            for name in ("freeze_epochs", "backbone_lr_mult"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to a pretrained start: pass --pretrained too")
            return
        if not isinstance(self.pretrained, str) or not self.pretrained.strip():
            raise ValueError(f"pretrained must name weights, got {self.pretrained!r}")
        if self.freeze_epochs is not None and (isinstance(self.freeze_epochs, bool) or
                                               not isinstance(self.freeze_epochs, int) or self.freeze_epochs < 0):
            raise ValueError(f"freeze_epochs must be a whole number ≥ 0, got {self.freeze_epochs!r}")
        mult = self.backbone_lr_mult
        if mult is not None and not (isinstance(mult, (int, float)) and math.isfinite(mult) and 0 <= mult <= 10):
            raise ValueError(f"backbone_lr_mult must be in [0, 10], got {mult!r}")
        from ..pretrained import check_source

        check_source(self.pretrained, self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of to_dict (config.json); unknown keys are an error, not silently dropped."""
        d = dict(d)
        optim = d.pop("optim", {}) or {}
        optim = {**optim, "step_epochs": tuple(optim.get("step_epochs", ()))}
        return cls(**d, optim=OptimConfig(**optim))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")


def _fraction(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


# options that say how or where to run, not what the run is: never reported as a change on resume
_HOW_TO_RUN = ("resume", "overwrite", "quiet", "out")


def from_options(top: dict[str, Any], optim: dict[str, Any], model_options: dict[str, Any],
                 base: TrainConfig | None = None) -> TrainConfig:
    """`base` (default: the defaults) with the given options replacing its values."""
    base = base or TrainConfig()
    merged_model = {**base.model_options, **model_options}
    return dataclasses.replace(base, **top, optim=dataclasses.replace(base.optim, **optim),
                               model_options=merged_model)


def saved_config(out: str | Path) -> TrainConfig | None:
    """The config.json of the run in `out`, or None when there is none yet."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} cannot be read back ({e}); resume needs the run's own config") from None


def changes(before: TrainConfig, after: TrainConfig) -> list[str]:
    """'name: old → new' for every option that differs (the how-to-run switches left out)."""
    a, b = _flat(before.to_dict()), _flat(after.to_dict())
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in b if a.get(k) != b.get(k) and k not in _HOW_TO_RUN]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k == "optim":
            out.update(_flat(v, ""))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out
