"""LeNet-5, the modern variant (ReLU, average pooling) on 32×32 single-channel images."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .layers import ACTIVATIONS, Conv, Dense, avg_pool2, choose, explain_point, flatten


class LeNet5(nn.Module):
    """conv 6@5×5 → act → avgpool 2 → conv 16@5×5 → act → avgpool 2 → 120 → 84 → classes.

    28×28 digits are padded to 32×32 by the preprocessing (PreprocessSpec resize mode "pad"), not here,
    so that the model stays the textbook function of its input.
    """

    num_classes: int = 10
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = choose(ACTIVATIONS, self.activation, "activation")
        x = x.astype(self.dtype)
        x = avg_pool2(explain_point(self, act(Conv(6, (5, 5), padding="VALID", dtype=self.dtype)(x)), 1))
        x = avg_pool2(explain_point(self, act(Conv(16, (5, 5), padding="VALID", dtype=self.dtype)(x)), 2))
        x = flatten(x)
        x = act(Dense(120, dtype=self.dtype)(x))
        x = act(Dense(84, dtype=self.dtype)(x))
        return Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
