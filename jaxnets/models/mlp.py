"""Fully connected networks: logistic regression, the shallow one-hidden-layer net, deep MLPs.

One module covers all three because they differ only in their hidden sizes; the registry gives each
classic its own name and defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from .layers import ACTIVATIONS, INITIALIZERS, Dense, PixelDense, choose, flatten


class MLP(nn.Module):
    """flatten → [Dense → activation → dropout] × len(hidden_sizes) → Dense(num_classes).

    `activation` is one name for every hidden layer or one name per layer; `weight_init` picks the weight
    initialiser ("small" = N(0, 0.01) reproduces the course's stuck-at-0.693 lesson).
    """

    num_classes: int
    hidden_sizes: Sequence[int] = ()
    activation: str | Sequence[str] = "relu"
    weight_init: str = "he"  # the user-facing option is `init` (a field of that name would hide Module.init)
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    def activations(self) -> list[str]:
        names = [self.activation] * len(self.hidden_sizes) if isinstance(self.activation, str) else list(
            self.activation
        )
        if len(names) != len(self.hidden_sizes):
            raise ValueError(
                f"activation lists {len(names)} names for {len(self.hidden_sizes)} hidden layers; "
                "give one name for all layers or one per layer"
            )
        for name in names:
            choose(ACTIVATIONS, name, "activation")
        return names

    takes_pixels = True  # `standardize=` below: scoring.forward hands it the uint8 pixels (not a dataclass field)

    @nn.compact
    def __call__(self, x, train: bool = False, standardize: Callable | None = None):
        """x: the model input; or, with `standardize` (pixels → model input), the uint8 pixels, which the first
        layer standardises (`PixelDense`: the same parameters and, to float rounding, the same function)."""
        kernel_init = choose(INITIALIZERS, self.weight_init, "init")
        widths = [*self.hidden_sizes, self.num_classes]
        if standardize is None:
            x = Dense(widths[0], kernel_init=kernel_init, dtype=self.dtype, name="Dense_0")(
                flatten(x).astype(self.dtype))
        else:
            x = PixelDense(widths[0], kernel_init=kernel_init, dtype=self.dtype, standardize=standardize,
                           name="Dense_0")(x)
        for i, act in enumerate(self.activations(), start=1):
            x = ACTIVATIONS[act](x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = Dense(widths[i], kernel_init=kernel_init, dtype=self.dtype, name=f"Dense_{i}")(x)
        return x.astype(jnp.float32)
