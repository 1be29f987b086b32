"""The jitted training step: a pure function of (state, batch); nothing here knows about files or epochs.
Evaluation is inference's step over the state's variables (inference/scoring.py): the one eval-mode
`forward` that Predictor and the service use too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import optax

from .. import runtime
from ..data.augment import AugmentSpec, augment_batch
from ..data.preprocess import PreprocessSpec, normalize, to_unit
from ..inference.metrics import loss_and_predictions, summed
from ..inference.scoring import make_eval_step as inference_eval_step
from .state import TrainState


@dataclass(frozen=True)
class StepConfig:
    spec: PreprocessSpec
    num_classes: int  # classes in the data (2 for a binary head)
    binary: bool
    label_smoothing: float = 0.0
    augment: AugmentSpec = field(default_factory=AugmentSpec)


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


def make_head_step(model, head_tx, cfg: StepConfig) -> Callable:
    """The frozen phase of a fine-tune: head_step(state, batch) → (state, metric sums) where only the head
    learns. The backbone runs in inference mode (BatchNorm on its running statistics, which stay as they are;
    no dropout), its parameters are returned bit-identical, and XLA drops its backward pass (its gradients are
    never used). `head_tx` is the head part of `finetune_optimizer`: it updates `state.opt_state[:-1]`; the
    backbone's half, the last, is untouched."""
    from ..models import head_mask

    def head_step(state: TrainState, batch):
        x = normalize(augment_batch(to_unit(batch["image"]), jax.random.fold_in(state.rng, state.step), cfg.augment),
                      cfg.spec)
        mask = batch["mask"]
        count = jnp.maximum(jnp.sum(mask), 1)

        def loss_fn(params):
            logits = model.apply({"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats
                                                        else {})}, x, train=False)
            loss, preds = loss_and_predictions(logits, batch["label"], cfg.binary, cfg.label_smoothing)
            return jnp.sum(loss * mask) / count, (loss, preds)

        (mean_loss, (loss, preds)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        is_head = head_mask(state.params)
        grads = jax.tree.map(lambda g, h: g if h else jnp.zeros_like(g), grads, is_head)  # clipping sees the head's
        head_state, backbone_state = tuple(state.opt_state[:-1]), state.opt_state[-1]
        updates, head_state = head_tx.update(grads, head_state, state.params, value=mean_loss)
        params = jax.tree.map(lambda p, u, h: p + u if h else p, state.params, updates, is_head)
        new_state = state.replace(params=params, opt_state=(*head_state, backbone_state), step=state.step + 1)
        return new_state, summed(loss, preds, batch["label"], mask)

    return runtime.jit(head_step, donate_argnums=0)


def make_eval_step(model, cfg: StepConfig) -> Callable:
    """eval_step(variables, batch) → metric sums with the confusion matrix: inference's, for the step's config."""
    return inference_eval_step(model, cfg.spec, cfg.num_classes, cfg.binary)
