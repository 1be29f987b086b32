"""Pretrained weights: torchvision/timm state dicts (or another jaxnets checkpoint) into jaxnets models.

`convert` writes an ordinary jaxnets checkpoint (model card with the ImageNet class names and torchvision's
evaluation preprocessing), so predict, evaluate, package and serve use it unchanged; `pretrained_variables`
is what `jaxnets train --pretrained` starts from. The layout rules are in layout.py, the sources in sources.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .layout import HEADS, ImportMismatch, ImportReport, family, import_state
from .sources import WeightsError, check_url, read_state, resolve

__all__ = ["ImportMismatch", "ImportReport", "WeightsError", "check_source", "convert", "imagenet_classes",
           "pretrained_variables"]

log = logging.getLogger("jaxnets.pretrained")


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names in the order of torchvision's (and timm's) output units."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def _head_outputs(model_name: str, state: dict[str, np.ndarray]) -> int:
    """Outputs of the state dict's classifier (fc, or the last linear layer of classifier.N)."""
    if family(model_name) == "resnet":
        key = "fc.weight"
    elif family(model_name) == "efficientnet":
        key = "_fc.weight" if "_fc.weight" in state else "classifier.weight"
    else:
        linears = sorted(int(k.split(".")[1]) for k in state if k.startswith("classifier.") and k.endswith(".weight"))
        key = f"classifier.{linears[-1]}.weight" if linears else "classifier.weight"
    if key not in state:
        raise ImportMismatch(f"the state dict has no {key}: not a {model_name} checkpoint")
    return int(state[key].shape[0])


def _is_jaxnets_checkpoint(source: str) -> bool:
    path = Path(source).expanduser()
    return path.is_dir() and any((p / "model_card.json").is_file() for p in (path, path / "checkpoints"))


def pretrained_variables(source: str, model_name: str, variables: dict[str, Any], channels: int
                         ) -> tuple[dict[str, Any], list[str]]:
    """`variables` (a fresh initialisation) with the source's weights in place, and what was done, in lines.
    The source is a jaxnets checkpoint directory, a weights file, a URL or a catalogue name."""
    if _is_jaxnets_checkpoint(source):
        return _from_checkpoint(source, model_name, variables)
    weights = resolve(source)
    if weights.model and weights.model != model_name:
        raise ImportMismatch(f"{source} holds {weights.model} weights, not {model_name}'s: pass --model "
                             f"{weights.model}")
    new, report = import_state(model_name, variables, read_state(weights.path), channels)
    return new, [f"{source}: " + "; ".join(report.lines())]


def _from_checkpoint(source: str, model_name: str, variables: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Every layer of another jaxnets checkpoint of the same model, but a head of another size."""
    from ..inference.predictor import restore_model

    _, saved, card, step = restore_model(source)
    if card.model != model_name:
        raise ImportMismatch(f"{source} is a {card.model} checkpoint, not a {model_name} one: pass --model "
                             f"{card.model}")
    head = HEADS[family(model_name)]
    fresh = np.shape(saved["params"][head]["kernel"]) != np.shape(variables["params"][head]["kernel"])
    params = {k: (variables["params"][k] if fresh and k == head else v) for k, v in saved["params"].items()}
    if _shapes(params) != _shapes(variables["params"]):
        raise ImportMismatch(f"{source}'s {card.model} has other layer shapes than this one (model options differ?)")
    new = {"params": params, **({"batch_stats": saved["batch_stats"]} if "batch_stats" in saved else {})}
    lines = [f"{source}: epoch {step} of a {card.model} with {len(card.classes)} classes"]
    if fresh:
        here = np.shape(variables["params"][head]["kernel"])[-1]
        lines.append(f"new head: {head} ({card.num_outputs} outputs there, {here} here): initialised as jaxnets does")
    return new, lines


def _shapes(tree: Any) -> Any:
    import jax

    return jax.tree.map(np.shape, tree)


@dataclass(frozen=True)
class _WeightsOnly:
    """What `Checkpoints.save` reads of a training state, for weights that never trained here: no optimizer
    state, step 0, no average (a converted checkpoint is restored as plain variables). Not training's TrainState:
    pretrained/ sits below train/ and never imports it."""

    params: Any
    batch_stats: Any
    opt_state: Any = field(default_factory=dict)
    step: np.ndarray = field(default_factory=lambda: np.zeros((), np.int32))
    rng: np.ndarray = field(default_factory=lambda: np.zeros((2,), np.uint32))
    ema: Any = field(default_factory=dict)


def convert(source: str, model_name: str | None, out: str | Path, classes: list[str] | None = None,
            size: int | None = None, options: dict[str, Any] | None = None) -> Path:
    """Write the weights of `source` as a jaxnets checkpoint in `out` (a new or empty folder): the model card
    names the classes (ImageNet's for a 1,000-way ImageNet head), the model options the weights need (an
    EfficientNet-Lite's style) and the evaluation preprocessing the weights were trained with: torchvision's
    (ImageNet mean/std) for alexnet/vgg/resnet and EfficientNet-Lite in the "pytorch" style, [-1, 1] for the
    TensorFlow-trained Lites (their stem batch norm's statistics say so: tools/efficientnet_lite_weights.py).
    `size` defaults to the model's own input size."""
    from ..checkpoint import Checkpoints
    from ..data.preprocess import PreprocessSpec
    from ..inference.card import MODEL_CARD, ModelCard, card_bytes, write_card
    from ..models import create_model, get_entry, init_variables

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder: convert writes a new checkpoint, choose "
                              "another --out")
    weights = resolve(source)
    model_name = model_name or weights.model
    if model_name is None:
        raise ValueError(f"which model are the weights in {source} for? pass --model")
    if weights.model and weights.model != model_name:
        raise ImportMismatch(f"{source} holds {weights.model} weights, not {model_name}'s")
    state = read_state(weights.path)
    outputs = _head_outputs(model_name, state)
    names = _class_names(classes, outputs, weights.imagenet or outputs == 1000)
    options = dict(options or {})
    if family(model_name) == "efficientnet":
        options.setdefault("style", "tf")  # the reference; timm's efficientnet_lite0 is style=pytorch
    model = create_model(model_name, 1 if len(names) == 2 and outputs == 1 else outputs, **options)
    size = size or get_entry(model_name).size
    tf_trained = options.get("style") == "tf"
    spec = PreprocessSpec(size, size, 3, "crop", "half" if tf_trained else "imagenet", weights.crop_pct)
    variables, report = import_state(model_name, init_variables(model, spec.shape, 0), state)
    card = ModelCard(model=model_name, model_options=options, classes=tuple(names), binary=outputs == 1,
                     preprocess=spec, train_config={"converted_from": source})
    weights_only = _WeightsOnly(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    checkpoints = Checkpoints(out / "checkpoints", card.monitor)
    try:
        checkpoints.save(1, weights_only, {"epoch": 1, "history": []}, {card.monitor: 0.0},
                         extra_files={MODEL_CARD: card_bytes(card)})
    finally:
        checkpoints.close()
    write_card(out / "checkpoints", card)
    (out / "convert.json").write_text(json.dumps({"source": source, "model": model_name, "report": report.lines()},
                                                 indent=2))
    log.info("%s → %s: %s", source, out, "; ".join(report.lines()))
    return out


def _class_names(classes: list[str] | None, outputs: int, imagenet: bool) -> list[str]:
    count = 2 if outputs == 1 else outputs
    if classes is not None:
        if len(classes) != count:
            raise ValueError(f"{len(classes)} class names given for a head with {count} classes")
        return list(classes)
    if imagenet and outputs == 1000:
        return imagenet_classes()
    return [f"class_{i}" for i in range(count)]


def check_source(source: str, model_name: str) -> None:
    """Refuse at once (before any data is read) a source that cannot fit: a missing file, a model without a
    torchvision layout for a state dict, a catalogue name for another model. Downloads nothing."""
    if _is_jaxnets_checkpoint(source):
        return
    family(model_name)  # state dicts exist for alexnet, vgg, resnet and efficientnet_lite only
    for prefix in ("torchvision:", "timm:"):
        if source.startswith(prefix):
            named = source.removeprefix(prefix).partition(".")[0]
            if named != model_name:
                raise ImportMismatch(f"{source} holds {named} weights, not {model_name}'s: pass --model {named}")
            return
    if source.startswith(("http://", "https://")):
        check_url(source)
    elif not Path(source).expanduser().is_file():
        raise WeightsError(f"{source}: no such file or jaxnets run, and not a name (torchvision:MODEL, "
                           "timm:MODEL.TAG) or a URL")
