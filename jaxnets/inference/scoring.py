"""The one eval-mode function from uint8 pixels to logits, and the evaluation step over plain variables.

The eval step of training, `Predictor`, `jaxnets evaluate` and the service all go through `forward`,
which is what makes serving answer exactly what evaluation measured.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import runtime
from ..data.preprocess import PreprocessSpec, standardize
from .metrics import loss_and_predictions, means, summed


def forward(model, spec: PreprocessSpec) -> Callable:
    """(variables, uint8 images [N,H,W,C]) → float32 logits, eval mode. A model that `takes_pixels` (the MLPs)
    gets the pixels and this spec's `standardize`, which its first layer applies; the rest the standardised batch."""
    pixels_to_input = functools.partial(standardize, spec=spec)

    def apply(variables, images):
        if getattr(model, "takes_pixels", False):
            return model.apply(variables, images, train=False, standardize=pixels_to_input)
        return model.apply(variables, pixels_to_input(images), train=False)

    return apply


def probabilities(logits, binary: bool):
    """Class probabilities; a binary head's single logit becomes [P(class 0), P(class 1)]."""
    if binary:
        p1 = jax.nn.sigmoid(logits[:, 0])
        return jnp.stack([1 - p1, p1], axis=-1)
    return jax.nn.softmax(logits, axis=-1)


def log_probabilities(logits, binary: bool):
    """Log class probabilities, exact where a probability underflows to 0 (a loss of inf says nothing)."""
    if binary:
        return jnp.stack([jax.nn.log_sigmoid(-logits[:, 0]), jax.nn.log_sigmoid(logits[:, 0])], axis=-1)
    return jax.nn.log_softmax(logits, axis=-1)


def make_eval_step(model, spec: PreprocessSpec, num_classes: int, binary: bool) -> Callable:
    """eval_step(variables, batch) → masked metric sums with the confusion matrix; jitted once."""
    apply = forward(model, spec)

    def eval_step(variables, batch):
        logits = apply(variables, batch["image"])
        loss, preds = loss_and_predictions(logits, batch["label"], binary, 0.0)
        return summed(loss, preds, batch["label"], batch["mask"], num_classes)

    return runtime.jit(eval_step)


# one dispatch per batch for the running sums, instead of one per metric
add_sums = jax.jit(lambda total, sums: jax.tree.map(jnp.add, total, sums))


def score(eval_step: Callable, variables: dict, batches) -> dict[str, Any]:
    """Sum an eval step's metric sums over batches; means computed once, at the end."""
    total = None
    for batch in batches:
        sums = eval_step(variables, batch)
        total = sums if total is None else add_sums(total, sums)
    total = jax.device_get(total)
    return {**means(total), "confusion": np.asarray(total["confusion"])}
