"""torchvision's state-dict layout → jaxnets' Flax variables, exactly (numpy only: no torch, no JAX).

The rules (the same for every family):
  * a conv weight O×I×kh×kw becomes a kernel kh×kw×I×O (HWIO); a linear weight out×in is transposed;
  * BatchNorm weight/bias become params scale/bias, running_mean/running_var become batch_stats mean/var
    (num_batches_tracked is dropped: torch's momentum 0.1 is Flax's 0.9 and both models fix it);
  * the first dense layer after AlexNet's/VGG's adaptive pooling sees torch's C×H×W flatten order, so its
    rows are permuted at import: the model keeps flattening its NHWC activations as H×W×C;
  * a checkpoint head of another size (another number of classes, a binary head) is left as initialised:
    a fresh head, reported; one input channel gets the stem's RGB kernels summed (what timm does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .lite_layout import efficientnet_names

HEADS = {"alexnet": "Dense_2", "vgg": "Dense_2", "resnet": "fc", "efficientnet": "fc"}  # what a new task replaces
STEMS = {"alexnet": "Conv_0", "vgg": "Conv_0", "resnet": "conv1", "efficientnet": "stem/conv"}  # sees the pixels
POOLED = {"alexnet": (6, 6), "vgg": (7, 7)}  # the adaptive pooling output the first dense layer flattens


class ImportMismatch(ValueError):
    """A state dict that is not the model asked for: a missing, unexpected or misshapen tensor, named."""


@dataclass
class ImportReport:
    """What an import did: how many tensors were taken, and what was left as initialised and why."""

    loaded: int = 0
    fresh_head: str | None = None
    summed_stem: bool = False
    ignored: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.loaded} tensors imported"]
        if self.summed_stem:
            out.append("one input channel: the stem's RGB kernels summed")
        if self.fresh_head:
            out.append(f"new head: {self.fresh_head}")
        if self.ignored:
            out.append(f"ignored: {', '.join(self.ignored)}")
        return out


def family(model_name: str) -> str:
    """alexnet, vgg, resnet or efficientnet: the families with a PyTorch layout to import (ImageNet weights exist
    for them)."""
    for name in ("alexnet", "vgg", "resnet", "efficientnet"):
        if model_name.startswith(name):
            return name
    raise ValueError(f"{model_name} has no PyTorch layout to import weights into; pretrained weights exist "
                     "for alexnet, vgg11–19 (and _bn), resnet18–152 and efficientnet_lite0–4")


def _sequential(state: Mapping[str, np.ndarray], prefix: str) -> list[int]:
    """Indices of the layers with weights in a torch nn.Sequential (features.0, features.3, …), in order."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(rf"{prefix}\.(\d+)\.weight", k))}
    return sorted(found)


def _layer_paths(params: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    """'/'-joined paths of the layers (the dicts that hold arrays) of a params tree."""
    out = []
    for key, value in params.items():
        if isinstance(value, Mapping) and any(not isinstance(v, Mapping) for v in value.values()):
            out.append("/".join((*prefix, key)))
        elif isinstance(value, Mapping):
            out.extend(_layer_paths(value, (*prefix, key)))
    return out


def _resnet_torch_name(path: str) -> str:
    """conv1 → conv1, layer2_0/Conv_1 → layer2.0.conv2, layer2_0/downsample_bn → layer2.0.downsample.1."""
    parts = path.split("/")
    if len(parts) == 1:
        return parts[0]
    block = parts[0].replace("_", ".")
    inner = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(parts[1])
    if inner is None:
        kind, index = parts[1].split("_")
        inner = ("conv" if kind == "Conv" else "bn") + str(int(index) + 1)
    return f"{block}.{inner}"


def _positional(model_name: str, params: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> dict[str, str]:
    """AlexNet/VGG: the k-th Flax Conv/BatchNorm/Dense is the k-th conv/BN/linear of torch's Sequentials."""
    features = _sequential(state, "features")
    convs = [i for i in features if np.ndim(state[f"features.{i}.weight"]) == 4]
    norms = [i for i in features if f"features.{i}.running_mean" in state]
    linears = _sequential(state, "classifier")
    names = {}
    for path in _layer_paths(params):
        kind, index = path.split("_")
        pool = {"Conv": convs, "BatchNorm": norms, "Dense": linears}[kind]
        if int(index) >= len(pool):
            raise ImportMismatch(f"the state dict has fewer {kind} layers than {model_name} "
                                 f"({len(pool)}): not a {model_name} checkpoint")
        names[path] = f"{'classifier' if kind == 'Dense' else 'features'}.{pool[int(index)]}"
    return names


def import_state(model_name: str, variables: Mapping[str, Any], state: Mapping[str, np.ndarray],
                 channels: int = 3) -> tuple[dict[str, Any], ImportReport]:
    """(variables with the state dict's tensors in place, what was done). `variables` are the model's
    freshly initialised ones: their structure and shapes are the contract, and the head stays as they have
    it when the checkpoint's head has another size."""
    fam = family(model_name)
    state = {k: np.asarray(v) for k, v in state.items()}
    params, stats = variables["params"], variables.get("batch_stats", {})
    if fam == "resnet":
        names = {p: _resnet_torch_name(p) for p in _layer_paths(params)}
    elif fam == "efficientnet":
        try:
            names = efficientnet_names(model_name, _layer_paths(params), state)
        except (KeyError, ValueError) as e:
            raise ImportMismatch(f"not a {model_name} state dict: {e}") from None
    else:
        names = _positional(model_name, params, state)
    report = ImportReport()
    new_params, new_stats, used = {}, {}, set()
    for path, torch_name in names.items():
        ours = _get(params, path)
        theirs = _layer_tensors(state, torch_name, ours, path)
        used |= {f"{torch_name}.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                "num_batches_tracked")}
        if path == HEADS[fam] and theirs["weight"].shape[0] != _out_features(ours):
            report.fresh_head = (f"{torch_name} has {theirs['weight'].shape[0]} outputs, the model "
                                 f"{_out_features(ours)}: initialised as jaxnets does")
            _set(new_params, path, dict(ours))
            if _get(stats, path, None) is not None:
                _set(new_stats, path, dict(_get(stats, path)))
            continue
        converted_params, converted_stats = _convert_layer(fam, path, theirs, ours, channels, report)
        _check_shapes(path, torch_name, converted_params, ours)
        _set(new_params, path, converted_params)
        if converted_stats:
            _check_shapes(path, torch_name, converted_stats, _get(stats, path))
            _set(new_stats, path, converted_stats)
        report.loaded += len(converted_params) + len(converted_stats)
    report.ignored = sorted(k for k in state if k not in used)
    if report.ignored:
        raise ImportMismatch(f"the state dict holds tensors {model_name} has no place for: "
                             f"{', '.join(report.ignored[:5])}{' …' if len(report.ignored) > 5 else ''}")
    return ({"params": new_params, **({"batch_stats": new_stats} if stats else {})}, report)


def _out_features(layer: Mapping[str, Any]) -> int:
    return int(np.shape(layer["kernel"])[-1])


def _layer_tensors(state: Mapping[str, np.ndarray], torch_name: str, ours: Mapping[str, Any],
                   path: str) -> dict[str, np.ndarray]:
    wanted = ["weight"] + (["bias"] if "bias" in ours else [])
    if "scale" in ours:
        wanted += ["running_mean", "running_var"]
    missing = [f"{torch_name}.{k}" for k in wanted if f"{torch_name}.{k}" not in state]
    if missing:
        raise ImportMismatch(f"the state dict has no {', '.join(missing)} (for the model's {path})")
    return {k: state[f"{torch_name}.{k}"] for k in wanted}


def _convert_layer(fam: str, path: str, theirs: dict[str, np.ndarray], ours: Mapping[str, Any], channels: int,
                   report: ImportReport) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    w = theirs["weight"].astype(np.float32)
    if "scale" in ours:
        return ({"scale": w, "bias": theirs["bias"].astype(np.float32)},
                {"mean": theirs["running_mean"].astype(np.float32), "var": theirs["running_var"].astype(np.float32)})
    if w.ndim == 4:
        if path == STEMS[fam] and channels == 1 and w.shape[1] == 3:
            w = w.sum(axis=1, keepdims=True)
            report.summed_stem = True
        kernel = w.transpose(2, 3, 1, 0)
    else:
        kernel = w.T
        if path == "Dense_0" and fam in POOLED:
            kernel = _chw_rows_to_hwc(kernel, POOLED[fam])
    out = {"kernel": np.ascontiguousarray(kernel)}
    if "bias" in ours:
        out["bias"] = theirs["bias"].astype(np.float32)
    return out, {}


def _chw_rows_to_hwc(kernel: np.ndarray, pooled: tuple[int, int]) -> np.ndarray:
    """Rows of a (C·H·W, out) kernel in torch's flatten order → the H·W·C order of an NHWC flatten."""
    h, w = pooled
    c = kernel.shape[0] // (h * w)
    if c * h * w != kernel.shape[0]:
        raise ImportMismatch(f"the first dense layer takes {kernel.shape[0]} inputs, not channels × {h}×{w}")
    return kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)


def _check_shapes(path: str, torch_name: str, got: Mapping[str, np.ndarray], want: Mapping[str, Any]) -> None:
    for key, value in got.items():
        if tuple(np.shape(value)) != tuple(np.shape(want[key])):
            raise ImportMismatch(f"{torch_name} has shape {tuple(np.shape(value))} after conversion where the model's "
                                 f"{path}/{key} has {tuple(np.shape(want[key]))}: not this model's checkpoint")


def _get(tree: Mapping[str, Any], path: str, default: Any = KeyError) -> Any:
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            if default is KeyError:
                raise KeyError(path)
            return default
        node = node[part]
    return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value
