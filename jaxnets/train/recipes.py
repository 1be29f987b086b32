"""Per-model training defaults: what `jaxnets train --model M --data D` uses for every option not given.

Each family gets the recipe that fits the data it is meant for and its size:
* logistic regression and the MLPs — small grey images (digits, MNIST): Adam(W) with warm-up and cosine decay,
  light geometric augmentation (no mirroring: a mirrored digit is another symbol), label smoothing.
* LeNet-5 — digits and MNIST: the same, a smaller batch (more steps on 1,437 digits), 30 epochs.
* AlexNet, VGG, ResNet — photos trained from scratch on a few thousand images, where overfitting is the
  enemy. The full modern recipe (after timm's "ResNet strikes back", scaled down to small data sets) is random
  resized crops, flips and TrivialAugmentWide, MixUp/CutMix, random erasing, label smoothing, AdamW with weight
  decay 0.05, a warm-up, a weight average (EMA) for evaluation and a long cosine run. Measured on 4,000 cat/dog
  photos, a lighter version did better for every family tried: the classic augmentation (crops, flips, small
  rotations, colour jitter) with erasing and no MixUp/CutMix, keeping the rest.
  - AlexNet (no BatchNorm): at AdamW 1e-3 it collapsed to chance at the end of its warm-up, and under
    TrivialAugment + MixUp/CutMix it had learned almost nothing after 9 epochs (65 % val); the light recipe at
    2e-4 reaches 82.75 % val in 40 epochs at 128 px.
  - VGG-BN, light at 5e-4 for 30 epochs: 89.25 % val / 88.0 % test at 64 px.
  - ResNet, light at 1e-3 for 60 epochs: 89.0 / 89.5 / 91.0 % test at 128 px over three seeds (each seed its own
    split); the full recipe at 2e-3 stopped at 85.25 % test. TrivialAugment without mixing came close (one run:
    91.25 % validation, 89.0 % test against 89.75 / 89.5 % for the classic one on the same split).
  - VGG without BatchNorm keeps the full recipe with a lower rate (5e-4) and a longer warm-up, which it needs
    to leave chance level: no run of it has been measured yet.
  The README's results table has each run and its command.
The recipes are plain dictionaries of TrainConfig fields (and "optim" for OptimConfig's); `--help` prints them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FINETUNE_RECIPES", "MODEL_RECIPES", "describe_recipes", "finetune_recipe_for", "recipe_for"]

_SMALL_GREY: dict[str, Any] = {
    "epochs": 30, "batch_size": 64, "augment": "light", "label_smoothing": 0.1,
    "optim": {"optimizer": "adamw", "lr": 1e-3, "schedule": "warmup_cosine", "warmup_epochs": 1.0,
              "weight_decay": 1e-4},
}
_PHOTOS: dict[str, Any] = {
    "epochs": 60, "batch_size": 64, "augment": "trivial", "label_smoothing": 0.1, "mixup": 0.2, "cutmix": 1.0,
    "erase": 0.25, "ema": 0.998,
    "optim": {"optimizer": "adamw", "lr": 2e-3, "schedule": "warmup_cosine", "warmup_epochs": 3.0,
              "weight_decay": 0.05},
}
# what every measured photo run ended up with: classic augmentation and erasing, no MixUp/CutMix
_PHOTOS_CLASSIC: dict[str, Any] = {**_PHOTOS, "augment": "classic", "mixup": 0.0, "cutmix": 0.0}

MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "logistic_regression": {**_SMALL_GREY, "epochs": 20, "augment": "none", "label_smoothing": 0.0,
                            "optim": {**_SMALL_GREY["optim"], "lr": 3e-3}},
    "shallow_mlp": _SMALL_GREY,
    "mlp": _SMALL_GREY,
    "lenet5": {**_SMALL_GREY, "batch_size": 32, "optim": {**_SMALL_GREY["optim"], "lr": 2e-3}},
    "alexnet": {**_PHOTOS_CLASSIC, "epochs": 40, "optim": {**_PHOTOS["optim"], "lr": 2e-4}},
    "vgg": {**_PHOTOS, "optim": {**_PHOTOS["optim"], "lr": 5e-4, "warmup_epochs": 5.0}},
    "vgg_bn": {**_PHOTOS_CLASSIC, "epochs": 30, "optim": {**_PHOTOS["optim"], "lr": 5e-4}},
    "resnet": {**_PHOTOS_CLASSIC, "optim": {**_PHOTOS["optim"], "lr": 1e-3}},
    # from scratch: ResNet's measured recipe (BatchNorm everywhere, residual blocks alike); no run of it measured yet
    "efficientnet_lite": {**_PHOTOS_CLASSIC, "optim": {**_PHOTOS["optim"], "lr": 1e-3}},
}


# A family's own `--pretrained` recipe, over the general one (train/config.py's FINETUNE_RECIPE).
# EfficientNet-Lite on ImageNet weights: the new head alone for one epoch (the backbone's backward pass is dropped,
# so that epoch costs a forward pass), then two epochs of the whole network at a tenth of the rate. Its features
# already separate cats from dogs; a longer run buys little, and on a CPU each whole-network epoch costs several
# times the head-only one. Measured in docs/results.md (the command with no other flag).
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "efficientnet_lite": {"epochs": 3, "freeze_epochs": 1, "backbone_lr_mult": 0.1},
}


def finetune_recipe_for(model: str, base: dict[str, Any]) -> dict[str, Any]:
    """`base` (the general fine-tuning recipe) with `model`'s family's own settings over it."""
    own = FINETUNE_RECIPES.get("efficientnet_lite" if model.startswith("efficientnet_lite") else model, {})
    optim = {**base.get("optim", {}), **own.get("optim", {})}
    return {**base, **{k: v for k, v in own.items() if k != "optim"}, "optim": optim}


def recipe_for(model: str) -> dict[str, Any]:
    """The recipe of `model`'s family (a copy; {} for a model without one)."""
    if model.startswith("vgg"):
        key = "vgg_bn" if model.endswith("_bn") else "vgg"
    elif model.startswith("resnet"):
        key = "resnet"
    elif model.startswith("efficientnet_lite"):
        key = "efficientnet_lite"
    else:
        key = model
    recipe = MODEL_RECIPES.get(key, {})
    return {**recipe, "optim": dict(recipe.get("optim", {}))} if recipe else {}


def describe_recipes() -> str:
    """One line per family, as command-line options (for `jaxnets train --help`)."""
    lines = []
    for family, recipe in MODEL_RECIPES.items():
        flat = {**{k: v for k, v in recipe.items() if k != "optim"}, **recipe.get("optim", {})}
        lines.append(f"  {family}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flat.items()))
    return "\n".join(lines)
