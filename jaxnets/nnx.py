"""The NNX door: a jaxnets model (Flax Linen) as a Flax NNX module, its variables loaded, and back.

    model = jaxnets.create_model("resnet18", num_classes=10)
    variables = jaxnets.models.init_variables(model, (32, 32, 3), 0)   # or a checkpoint's, or imported weights
    net = jaxnets.to_nnx(model, variables)            # an nnx.Module: nnx.Optimizer, nnx.jit, nnx.split all take it
    logits = net(images, train=False)
    logits = net(images, train=True, mutable=["batch_stats"])   # BatchNorm's running statistics update in `net`
    variables = jaxnets.from_nnx(net)                  # {"params", "batch_stats"} again, for Predictor & co

`to_nnx` is Flax's own bridge (`flax.nnx.bridge.ToNNX`) with the variables put in place instead of a fresh
`lazy_init`: no sample input and no initialisation are needed, and the outputs are the Linen model's for the
same variables. Parameters are `nnx.Param`, BatchNorm's statistics `nnx.BatchStat`, each under the Linen
module's names (`net.conv1["kernel"]`). docs/nnx.md has a fine-tuning example with `nnx.Optimizer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import linen, nnx
from flax.nnx.bridge import variables as bridge_variables

__all__ = ["from_nnx", "to_nnx"]

_BRIDGE = ("to_nnx__", "_pytree__")  # ToNNX's own attributes; every other one is a variable of the Linen model


def to_nnx(model: linen.Module, variables: Mapping[str, Any], rngs: nnx.Rngs | None = None) -> nnx.bridge.ToNNX:
    """`model` as an NNX module holding `variables` (`{"params": …, "batch_stats": …}`, as jaxnets' checkpoints,
    `init_variables` and the pretrained import give them). `rngs` feeds the model's random layers in training
    (Dropout draws from its `dropout` stream); by default `nnx.Rngs(dropout=0)`."""
    if "params" not in variables:
        raise ValueError(f"variables need 'params' (got {sorted(variables)}): pass what init_variables or "
                         "restore_model gives")
    net = nnx.bridge.ToNNX(model, rngs=rngs if rngs is not None else nnx.Rngs(dropout=0))
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(dict(variables)).items():
        setattr(net, name, nnx.data(value))
    return net


def from_nnx(net: nnx.bridge.ToNNX) -> dict[str, Any]:
    """The Linen variables of a module made by `to_nnx` (after training, say): `{"params": …}` plus
    `"batch_stats"` when the model has BatchNorm, as `model.apply`, `Predictor` and checkpoints take them."""
    attrs = {k: v for k, v in vars(net).items() if not k.startswith(_BRIDGE)}
    return {k: v for k, v in bridge_variables.nnx_attrs_to_linen_vars(attrs).items()
            if k in ("params", "batch_stats")}
