"""Metrics as sums and counts (so padded rows never bias a mean), and the reports built from them."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def loss_and_predictions(logits, labels, binary: bool, label_smoothing: float = 0.0):
    """Per-example loss and predicted class. Binary: one logit, sigmoid BCE; else softmax CE."""
    if binary:
        logit = logits[:, 0]
        target = labels.astype(jnp.float32)
        if label_smoothing:
            target = target * (1 - label_smoothing) + 0.5 * label_smoothing
        return optax.sigmoid_binary_cross_entropy(logit, target), (logit > 0).astype(jnp.int32)
    if label_smoothing:
        num_classes = logits.shape[-1]
        target = optax.smooth_labels(jax_one_hot(labels, num_classes), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, target)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss, jnp.argmax(logits, axis=-1).astype(jnp.int32)


def soft_loss_and_predictions(logits, targets, binary: bool, label_smoothing: float = 0.0):
    """Per-example loss against target probabilities (MixUp/CutMix): [B, K] for softmax, P(class 1) [B] for the
    one-logit head; label smoothing towards the uniform distribution, as for integer labels."""
    if binary:
        logit = logits[:, 0]
        target = targets * (1 - label_smoothing) + 0.5 * label_smoothing
        return optax.sigmoid_binary_cross_entropy(logit, target), (logit > 0).astype(jnp.int32)
    target = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
    return optax.softmax_cross_entropy(logits, target), jnp.argmax(logits, axis=-1).astype(jnp.int32)


def jax_one_hot(labels, n):
    return (labels[:, None] == jnp.arange(n)[None, :]).astype(jnp.float32)


def summed(loss, preds, labels, mask, num_classes: int | None = None) -> dict:
    """Masked sums. With num_classes, also the confusion matrix [true, predicted]."""
    m = mask.astype(jnp.float32)
    out = {
        "loss_sum": jnp.sum(loss * m),
        "correct": jnp.sum((preds == labels) * m),
        "count": jnp.sum(m),
    }
    if num_classes:
        out["confusion"] = jax_one_hot(labels, num_classes).T @ (jax_one_hot(preds, num_classes) * m[:, None])
    return out


def means(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}


def format_report(test: dict, classes: list[str]) -> str:
    """The metrics table printed at the end of training and by `jaxnets evaluate`."""
    width = max(9, *(len(c) for c in classes))
    total = sum(v["support"] for v in test["per_class"].values())
    lines = [f"test accuracy {test['accuracy']:.4f}   loss {test['loss']:.4f}   ({total} images)", "",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for name in classes:
        r = test["per_class"][name]
        lines.append(f"{name:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:5.4f}  {r['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    for name, row in zip(classes, test["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{int(v):6d}" for v in row))
    return "\n".join(lines)
