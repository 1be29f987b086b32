"""The model zoo: one registry of pure Flax linen modules.

`create_model(name, num_classes, **options)` is the only way the rest of jaxnets builds a model, so the
model card can rebuild exactly the same module from its name and options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .alexnet import AlexNet
from .efficientnet import LITE_SCALING, STYLES, EfficientNetLite
from .layers import ACTIVATIONS, INITIALIZERS, choose
from .lenet import LeNet5
from .mlp import MLP
from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGG, VGG_CONFIGS

__all__ = [
    "MODEL_OPTIONS",
    "ModelEntry",
    "create_model",
    "get_entry",
    "head_mask",
    "head_name",
    "init_variables",
    "list_models",
]

# Option names users type that differ from the module field that holds them.
_ALIASES = {"init": "weight_init"}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Every option a registered model takes (but dtype, which is the run's): its value kind and help. The CLI
# makes one flag of each; a test checks that no model option lacks an entry here.
MODEL_OPTIONS: dict[str, tuple[str, str]] = {
    "hidden_sizes": ("ints", "MLP hidden layer sizes, e.g. 256,64"),
    "activation": ("strs", f"activation, or one per layer (MLP), of: {', '.join(sorted(ACTIVATIONS))}"),
    "init": ("str", f"MLP weight initialisation, of: {', '.join(sorted(INITIALIZERS))}"),
    "dropout_rate": ("float", "dropout rate of the dense layers (MLP, AlexNet, VGG)"),
    "zero_init_residual": ("bool", "ResNet: start each residual branch at zero (last BN scale = 0)"),
    "drop_connect_rate": ("float", "EfficientNet-Lite: stochastic depth of the last block (0 to it linearly)"),
    "style": ("str", "EfficientNet-Lite arithmetic: tf (TF SAME padding, BN eps 1e-3: the reference and its "
                     "ported weights) or pytorch (symmetric padding, eps 1e-5: timm's efficientnet_lite0)"),
}


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it, its fixed arguments, and the input it expects by default."""

    module: type[nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    size: int = 224
    channels: int = 3
    normalize: str = "imagenet"
    min_size: int = 1  # the smallest input height/width the architecture can compute on

    def options(self) -> list[str]:
        """Option names a user may set: the module's fields, less the ones the entry fixes."""
        names = {f.name for f in dataclasses.fields(self.module) if f.init}
        names -= set(self.fixed) | {"num_classes", "parent", "name"}
        public = {v: k for k, v in _ALIASES.items()}
        return sorted(public.get(n, n) for n in names)


_MLP_INPUT = {"size": 64, "channels": 3, "normalize": "half"}

_REGISTRY: dict[str, ModelEntry] = {
    "logistic_regression": ModelEntry(
        MLP, fixed={"hidden_sizes": ()}, defaults={"weight_init": "xavier"}, **_MLP_INPUT
    ),
    "shallow_mlp": ModelEntry(MLP, defaults={"hidden_sizes": (4,)}, size=128, channels=3, normalize="half"),
    "mlp": ModelEntry(MLP, defaults={"hidden_sizes": (256, 64)}, **_MLP_INPUT),
    "lenet5": ModelEntry(LeNet5, size=32, channels=1, normalize="half", min_size=16),  # two valid 5×5 convs + pools
    "alexnet": ModelEntry(AlexNet),
    **{
        f"vgg{depth}{suffix}": ModelEntry(VGG, fixed={"config": cfg, "batch_norm": bn})
        for depth, cfg in VGG_CONFIGS.items()
        for suffix, bn in (("", False), ("_bn", True))
    },
    "resnet18": ModelEntry(ResNet, fixed={"stage_sizes": (2, 2, 2, 2), "block": BasicBlock}),
    "resnet34": ModelEntry(ResNet, fixed={"stage_sizes": (3, 4, 6, 3), "block": BasicBlock}),
    "resnet50": ModelEntry(ResNet, fixed={"stage_sizes": (3, 4, 6, 3), "block": Bottleneck}),
    "resnet101": ModelEntry(ResNet, fixed={"stage_sizes": (3, 4, 23, 3), "block": Bottleneck}),
    "resnet152": ModelEntry(ResNet, fixed={"stage_sizes": (3, 8, 36, 3), "block": Bottleneck}),
    **{
        name: ModelEntry(EfficientNetLite, fixed={"width": width, "depth": depth}, defaults={"dropout_rate": drop},
                         size=size, normalize="half", min_size=32)
        for name, (width, depth, size, drop) in LITE_SCALING.items()
    },
}


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    return choose(_REGISTRY, name, "model")


def _validate(options: dict[str, Any]) -> dict[str, Any]:
    """Turn user-facing option values (strings from a CLI or a JSON model card) into module values and
    reject bad ones now, with the valid choices, rather than deep inside a trace."""
    out = dict(options)
    if "dtype" in out:
        dt = out["dtype"]
        out["dtype"] = choose(_DTYPES, dt, "dtype") if isinstance(dt, str) else dt
    if "hidden_sizes" in out:
        sizes = tuple(int(s) for s in out["hidden_sizes"])
        if any(s <= 0 for s in sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {sizes}")
        out["hidden_sizes"] = sizes
    if "activation" in out:
        acts = [out["activation"]] if isinstance(out["activation"], str) else list(out["activation"])
        for a in acts:
            choose(ACTIVATIONS, a, "activation")
        if not isinstance(out["activation"], str):
            out["activation"] = tuple(acts)
    if "init" in out:
        choose(INITIALIZERS, out["init"], "init")
    for public, field_name in _ALIASES.items():
        if public in out:
            out[field_name] = out.pop(public)
    if "style" in out:
        choose(STYLES, out["style"], "EfficientNet-Lite style")
    if "drop_connect_rate" in out and not 0.0 <= float(out["drop_connect_rate"]) < 1.0:
        raise ValueError(f"drop_connect_rate must be in [0, 1), got {out['drop_connect_rate']}")
    if "dropout_rate" in out and not 0.0 <= float(out["dropout_rate"]) < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {out['dropout_rate']}")
    return out


def create_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build a registered model. `num_classes=1` is a binary head: one logit for sigmoid/BCE."""
    entry = get_entry(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    valid = entry.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; valid options: {', '.join(valid)}")
    kwargs = {**entry.defaults, **_validate(options)}
    module = entry.module(num_classes=num_classes, **entry.fixed, **kwargs)
    if isinstance(module, MLP):
        module.activations()  # checks the per-layer activation list against the hidden sizes
    return module


def init_variables(model, input_shape: tuple[int, ...], seed: int | jax.Array) -> dict:
    """Initialise a model for inputs of `input_shape` (H, W, C) from `seed`: an int, a typed key
    (`jax.random.key(0)`) or an old raw `PRNGKey`.

    Every form becomes one typed key first, so an int and `jax.random.key(int)` (and `PRNGKey(int)`) give
    bit-identical variables: a caller who already holds a key need not turn it back into an int, and the
    ints stored in run configs keep initialising exactly as before.
    """
    import operator  # kept local: only this function of the module needs it

    dtype = getattr(seed, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        key = seed
    elif dtype == jnp.uint32 and getattr(seed, "shape", None) == (2,):
        key = jax.random.wrap_key_data(seed)
    else:
        try:
            key = jax.random.key(operator.index(seed))
        except TypeError:
            raise TypeError(f"seed must be an int, a jax.random.key or a raw PRNGKey, not {seed!r}") from None
    variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}  # not Grad-CAM's hooks


def head_name(params: dict) -> str:
    """The classifier layer a new task replaces: ResNet's `fc`, else the last `Dense_k` (AlexNet, VGG, LeNet-5,
    the MLPs)."""
    if "fc" in params:
        return "fc"
    dense = [k for k in params if k.startswith("Dense_") and k.removeprefix("Dense_").isdecimal()]
    if not dense:
        raise ValueError(f"no classifier layer among {', '.join(params)}")
    return max(dense, key=lambda k: int(k.removeprefix("Dense_")))


def head_mask(params: dict, head: bool = True) -> dict:
    """A tree of bools shaped like `params`: True on the head's leaves (or, with head=False, on the rest)."""
    name = head_name(params)
    return {k: jax.tree.map(lambda _, k=k: (k == name) == head, v) for k, v in params.items()}
