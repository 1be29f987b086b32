"""Where the model looks: Grad-CAM for the convolutional networks, gradient × input for the MLPs.

Grad-CAM (Selvaraju et al., 2017) weighs the channels of the last convolutional stage (ResNet's layer4,
VGG's/AlexNet's last conv, LeNet's conv2; the models mark it with `explain_point`) by the gradient of the class
score, sums over channels, keeps the positive part and resizes to the input. The weighting is position by
position (gradient × activation: HiResCAM, Draelos & Carin 2020), not by the gradient's spatial mean: for
ResNet, whose head averages the positions, the two are the same map; for LeNet, AlexNet and VGG, whose dense
heads weigh each position differently, the mean cancels out where the evidence sits (a square that means one
class at the top left and nothing elsewhere) and the map points anywhere.

The class score is the class's log-odds (see `_score`), not its bare logit, so that a shift every logit shares
does not show. MLPs get gradient × input against a black image, positive part, summed over channels: the
bare gradient of an MLP is nearly the same weight pattern for every image (it spreads over every position a
square could take), while × input keeps the pixels that carried the evidence. Logistic regression gets its
weight image for the class (|d logit / d pixel|), the explanation a linear model has. Maps are in [0, 1] at the
model's input height × width, for the predicted class unless one is given. One jitted function per model and
batch size; images go through the checkpoint's PreprocessSpec like every prediction.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..data.preprocess import PreprocessSpec, check_pixels, normalize, standardize, to_unit
from ..models.layers import CAM_LAYER
from ..models.mlp import MLP

__all__ = ["explain_pixels", "has_cam_layer"]


def has_cam_layer(model, variables: dict, shape: tuple[int, int, int]) -> bool:
    """Whether the model marks a convolutional feature map for Grad-CAM (the CNNs do, the MLPs don't)."""
    out = jax.eval_shape(lambda x: model.apply(variables, x, mutable=["intermediates"])[1],
                         jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    return CAM_LAYER in out.get("intermediates", {})


def _score(logits: jax.Array, classes: jax.Array, binary: bool, log_odds: bool = True) -> jax.Array:
    """Sum over the batch of each image's log-odds for its class: log p(c) - log(1 - p(c)), that is the class's
    logit minus the log-sum-exp of the others' (the binary head's logit, negated for class 0). The logits alone
    are defined only up to a shift that every class shares, and that shift's gradient would land in the map;
    the log-odds are what the prediction depends on, and they do not saturate as the probability nears 1."""
    if binary:
        return jnp.sum(jnp.where(classes == 1, logits[:, 0], -logits[:, 0]))
    if not log_odds:  # logistic regression: the class's logit, whose gradient is its weight image
        return jnp.sum(jnp.take_along_axis(logits, classes[:, None], axis=1))
    logits = logits.astype(jnp.float32)
    chosen = jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(classes, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return jnp.sum(chosen - jax.nn.logsumexp(others, axis=1))


def _normalise(maps: jax.Array) -> jax.Array:
    """Each map to [0, 1] by its own minimum and maximum (as pytorch-grad-cam scales its maps): the floor that
    every position shares says nothing about where the model looks. A flat map is all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low, high = flat.min(axis=1)[:, None, None], flat.max(axis=1)[:, None, None]
    return jnp.where(high > low, (maps - low) / jnp.maximum(high - low, 1e-12), 0.0)


@partial(jax.jit, static_argnames=("model", "spec", "binary", "cam", "linear"))
def _explain(model, variables, pixels, classes, spec: PreprocessSpec, binary: bool, cam: bool, linear: bool):
    x = standardize(pixels, spec)
    logits = model.apply(variables, x)
    if classes is None:
        classes = (logits[:, 0] > 0).astype(jnp.int32) if binary else jnp.argmax(logits, axis=1)
    if cam:
        _, hooks = model.apply(variables, x, mutable=["perturbations", "intermediates"])
        zeros = hooks["perturbations"]

        def score(perturbations):
            out, state = model.apply({**variables, "perturbations": perturbations}, x, mutable=["intermediates"])
            return _score(out, classes, binary), state["intermediates"]

        grads, inter = jax.grad(score, has_aux=True)(zeros)
        features = jax.tree.leaves(inter)[0].astype(jnp.float32)  # (N, h, w, C): the one sown map
        gradient = jax.tree.leaves(grads)[0].astype(jnp.float32)
        maps = jax.nn.relu((gradient * features).sum(axis=-1))  # position by position: see the module doc
        maps = jax.image.resize(maps, (maps.shape[0], spec.height, spec.width), "bilinear")
    else:
        unit = to_unit(pixels)  # the image as light in [0, 1], 0 = black: the reference of the product
        grad = jax.grad(lambda u: _score(model.apply(variables, normalize(u, spec)), classes, binary,
                                         log_odds=not linear))(unit)
        maps = jnp.abs(grad).sum(axis=-1) if linear else jax.nn.relu((grad * unit).sum(axis=-1))
    return _normalise(jnp.maximum(maps, 0.0)), classes


def explain_pixels(model, variables: dict, spec: PreprocessSpec, binary: bool, pixels: np.ndarray,
                   classes: np.ndarray | None = None, cam: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (N, H, W) in [0, 1], the class index each map explains) for uint8 NHWC pixels."""
    pixels = check_pixels(pixels, spec)
    cam = has_cam_layer(model, variables, spec.shape) if cam is None else cam
    chosen = None if classes is None else jnp.asarray(classes, jnp.int32)
    linear = isinstance(model, MLP) and not model.hidden_sizes
    maps, chosen = _explain(model, variables, jnp.asarray(pixels), chosen, spec, binary, cam, linear)
    return np.asarray(maps, np.float32), np.asarray(chosen)
