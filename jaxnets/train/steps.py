"""The jitted steps. Pure functions of (state, batch); nothing here knows about files or epochs.

`forward` is the single eval-mode function from uint8 pixels to logits: the eval step, `Predictor` and
the service all call it, which is what makes serving answer exactly what evaluation measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import optax

from .. import runtime
from ..data.augment import AugmentSpec, augment_batch
from ..data.preprocess import PreprocessSpec, normalize, standardize, to_unit
from .metrics import loss_and_predictions, summed
from .state import TrainState


@dataclass(frozen=True)
class StepConfig:
    spec: PreprocessSpec
    num_classes: int  # classes in the data (2 for a binary head)
    binary: bool
    label_smoothing: float = 0.0
    augment: AugmentSpec = field(default_factory=AugmentSpec)


def forward(model, spec: PreprocessSpec) -> Callable:
    """(variables, uint8 images [N,H,W,C]) → float32 logits, eval mode."""

    def apply(variables, images):
        return model.apply(variables, standardize(images, spec), train=False)

    return apply


def probabilities(logits, binary: bool):
    """Class probabilities; a binary head's single logit becomes [P(class 0), P(class 1)]."""
    if binary:
        p1 = jax.nn.sigmoid(logits[:, 0])
        return jnp.stack([1 - p1, p1], axis=-1)
    return jax.nn.softmax(logits, axis=-1)


def make_train_step(model, tx, cfg: StepConfig) -> Callable:
    """train_step(state, batch) → (state, metric sums). The state is donated: updated in place."""

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        aug_key, dropout_key = jax.random.split(key)
        x = normalize(augment_batch(to_unit(batch["image"]), aug_key, cfg.augment), cfg.spec)
        mask = batch["mask"]
        count = jnp.maximum(jnp.sum(mask), 1)
        has_bn = bool(state.batch_stats)

        def loss_fn(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if has_bn else {})}
            out = model.apply(variables, x, train=True, rngs={"dropout": dropout_key},
                              mutable=["batch_stats"] if has_bn else False)
            logits, updates = out if has_bn else (out, {})
            loss, preds = loss_and_predictions(logits, batch["label"], cfg.binary, cfg.label_smoothing)
            return jnp.sum(loss * mask) / count, (loss, preds, updates)

        (mean_loss, (loss, preds, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params, value=mean_loss)
        params = optax.apply_updates(state.params, param_updates)
        new_state = state.replace(
            params=params, opt_state=opt_state, step=state.step + 1,
            batch_stats=updates.get("batch_stats", state.batch_stats),
        )
        return new_state, summed(loss, preds, batch["label"], mask)

    return runtime.jit(train_step, donate_argnums=0)


def make_eval_step(model, cfg: StepConfig) -> Callable:
    """eval_step(state, batch) → metric sums with the confusion matrix. Only params/batch_stats are read."""
    apply = forward(model, cfg.spec)

    def eval_step(state: TrainState, batch):
        logits = apply(state.variables, batch["image"])
        loss, preds = loss_and_predictions(logits, batch["label"], cfg.binary, 0.0)
        return summed(loss, preds, batch["label"], batch["mask"], cfg.num_classes)

    return runtime.jit(eval_step)
