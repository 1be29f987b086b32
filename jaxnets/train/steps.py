"""The jitted training step: a pure function of (state, batch); nothing here knows about files or epochs.
Evaluation is inference's step over the state's variables (inference/scoring.py): the one eval-mode
`forward` that Predictor and the service use too."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import optax

from .. import runtime
from ..data.augment import AugmentSpec, augment_batch
from ..data.erase import random_erase
from ..data.mix import MixSpec, mix_batch, soft_targets
from ..data.preprocess import PreprocessSpec, normalize, standardize, to_unit
from ..inference.metrics import loss_and_predictions, soft_loss_and_predictions, summed
from ..inference.scoring import make_eval_step as inference_eval_step
from .state import TrainState


@dataclass(frozen=True)
class StepConfig:
    spec: PreprocessSpec
    num_classes: int  # classes in the data (2 for a binary head)
    binary: bool
    label_smoothing: float = 0.0
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    mix: MixSpec = field(default_factory=MixSpec)
    erase: float = 0.0  # random-erasing probability
    class_weights: tuple[float, ...] | None = None  # one per class, multiplying each example's loss
    ema: float = 0.0  # decay of the weights' moving average (0: none)


def example_weights(targets: jax.Array, class_weights: tuple[float, ...] | None, binary: bool) -> jax.Array:
    """Each example's loss weight: its class's weight, or the mix of its classes' weights for mixed targets."""
    if class_weights is None:
        return jnp.ones(targets.shape[0], jnp.float32)
    w = jnp.asarray(class_weights, jnp.float32)
    return (1 - targets) * w[0] + targets * w[1] if binary else targets @ w


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The decay used at `step` (0-based): min(decay, (1 + step) / (10 + step)), so that the early average is not
    dominated by the initial weights (TensorFlow's ExponentialMovingAverage with num_updates)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1 + step) / (10 + step))


def step_inputs(key: jax.Array, batch, cfg: StepConfig):
    """(normalised images, target probabilities, dropout key): augmentation, MixUp/CutMix and erasing, all on
    device and all from `key` (the train step's: its state's key folded with the step number)."""
    aug_key, dropout_key, mix_key, erase_key = jax.random.split(key, 4)
    images = augment_batch(to_unit(batch["image"]), aug_key, cfg.augment)
    targets = soft_targets(batch["label"], cfg.num_classes, cfg.binary)
    images, targets, _ = mix_batch(images, targets, batch["mask"], mix_key, cfg.mix)
    x = random_erase(normalize(images, cfg.spec), batch["mask"], erase_key, cfg.erase)
    return x, targets, dropout_key


def reads_pixels(model, cfg: StepConfig) -> bool:
    """Whether the train step hands `model` the batch's uint8 pixels and the spec's `standardize` instead of the
    normalised images: a model that `takes_pixels` (the MLPs, whose first layer then reads the bytes through
    jaxnets' kernel, forward and weight gradient) and a step that changes nothing between the pixels and the
    model (no augmentation, MixUp/CutMix or erasing). The same function either way, to float rounding."""
    return (getattr(model, "takes_pixels", False) and cfg.augment.is_identity and cfg.mix.is_identity
            and cfg.erase <= 0)


def make_train_step(model, tx, cfg: StepConfig) -> Callable:
    """train_step(state, batch) → (state, metric sums), jitted. The state is donated: updated in place."""
    runtime.training_process()
    return runtime.jit(train_step_fn(model, tx, cfg), donate_argnums=0)


def train_step_fn(model, tx, cfg: StepConfig) -> Callable:
    """The training step as a pure function of (state, batch) → (state, metric sums): what `make_train_step`
    jits."""
    soft = not cfg.mix.is_identity or cfg.class_weights is not None
    pixels = {"standardize": functools.partial(standardize, spec=cfg.spec)} if reads_pixels(model, cfg) else None

    def train_step(state: TrainState, batch):
        x, targets, dropout_key = step_inputs(jax.random.fold_in(state.rng, state.step), batch, cfg)
        if pixels is not None:  # the normalised x above is then dead code, which XLA drops
            x = batch["image"]
        mask = batch["mask"]
        count = jnp.maximum(jnp.sum(mask), 1)
        has_bn = bool(state.batch_stats)
        weights = example_weights(targets, cfg.class_weights, cfg.binary)

        def loss_fn(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if has_bn else {})}
            out = model.apply(variables, x, train=True, rngs={"dropout": dropout_key},
                              mutable=["batch_stats"] if has_bn else False, **(pixels or {}))
            logits, updates = out if has_bn else (out, {})
            if soft:
                loss, preds = soft_loss_and_predictions(logits, targets, cfg.binary, cfg.label_smoothing)
            else:
                loss, preds = loss_and_predictions(logits, batch["label"], cfg.binary, cfg.label_smoothing)
            loss = loss * weights
            return jnp.sum(loss * mask) / count, (loss, preds, updates)

        (mean_loss, (loss, preds, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params, value=mean_loss)
        params = optax.apply_updates(state.params, param_updates)
        batch_stats = updates.get("batch_stats", state.batch_stats)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1, batch_stats=batch_stats,
                                  ema=_updated_ema(state, params, batch_stats, opt_state, cfg.ema))
        return new_state, summed(loss, preds, batch["label"], mask)

    return train_step


def _updated_ema(state: TrainState, params, batch_stats, opt_state, decay: float):
    """The weights' average after this step: moved only when the weights moved (not on the inner steps of a
    gradient accumulation), with the warm-up of `ema_decay`."""
    if not state.ema:
        return state.ema
    d = ema_decay(decay, state.step)
    moved = opt_state.mini_step == 0 if isinstance(opt_state, optax.MultiStepsState) else True  # a group ended
    new = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema, {"params": params, "batch_stats": batch_stats})
    return jax.tree.map(lambda n, e: jnp.where(moved, n, e), new, state.ema)


def make_head_step(model, head_tx, cfg: StepConfig) -> Callable:
    """`head_step_fn`, jitted, its state donated."""
    runtime.training_process()
    return runtime.jit(head_step_fn(model, head_tx, cfg), donate_argnums=0)


def head_step_fn(model, head_tx, cfg: StepConfig) -> Callable:
    """The frozen phase of a fine-tune: head_step(state, batch) → (state, metric sums) where only the head
    learns. The backbone runs in inference mode (BatchNorm on its running statistics, which stay as they are;
    no dropout), its parameters are returned bit-identical, and XLA drops its backward pass (its gradients are
    never used). `head_tx` is the head part of `finetune_optimizer`: it updates `state.opt_state[:-1]`; the
    backbone's half, the last, is untouched."""
    from ..models import head_mask

    soft = not cfg.mix.is_identity or cfg.class_weights is not None

    def head_step(state: TrainState, batch):
        x, targets, _ = step_inputs(jax.random.fold_in(state.rng, state.step), batch, cfg)
        mask = batch["mask"]
        count = jnp.maximum(jnp.sum(mask), 1)
        weights = example_weights(targets, cfg.class_weights, cfg.binary)

        def loss_fn(params):
            logits = model.apply({"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats
                                                        else {})}, x, train=False)
            if soft:
                loss, preds = soft_loss_and_predictions(logits, targets, cfg.binary, cfg.label_smoothing)
            else:
                loss, preds = loss_and_predictions(logits, batch["label"], cfg.binary, cfg.label_smoothing)
            loss = loss * weights
            return jnp.sum(loss * mask) / count, (loss, preds)

        (mean_loss, (loss, preds)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        is_head = head_mask(state.params)
        grads = jax.tree.map(lambda g, h: g if h else jnp.zeros_like(g), grads, is_head)  # clipping sees the head's
        head_state, backbone_state = tuple(state.opt_state[:-1]), state.opt_state[-1]
        updates, head_state = head_tx.update(grads, head_state, state.params, value=mean_loss)
        params = jax.tree.map(lambda p, u, h: p + u if h else p, state.params, updates, is_head)
        opt_state = (*head_state, backbone_state)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                                  ema=_updated_ema(state, params, state.batch_stats, opt_state, cfg.ema))
        return new_state, summed(loss, preds, batch["label"], mask)

    return head_step


def make_eval_step(model, cfg: StepConfig) -> Callable:
    """eval_step(variables, batch) → metric sums with the confusion matrix: inference's, for the step's config."""
    return inference_eval_step(model, cfg.spec, cfg.num_classes, cfg.binary)
