"""Fully connected networks: logistic regression, the shallow one-hidden-layer net, deep MLPs.

One module covers all three because they differ only in their hidden sizes; the registry gives each
classic its own name and defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from .layers import ACTIVATIONS, INITIALIZERS, choose, flatten


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

    @nn.compact
    def __call__(self, x, train: bool = False):
        kernel_init = choose(INITIALIZERS, self.weight_init, "init")
        x = flatten(x).astype(self.dtype)
        for width, act in zip(self.hidden_sizes, self.activations(), strict=True):
            x = nn.Dense(width, kernel_init=kernel_init, dtype=self.dtype)(x)
            x = ACTIVATIONS[act](x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
