"""Where the model looks: Grad-CAM for the convolutional networks, gradient × input for the MLPs.

Grad-CAM (Selvaraju et al., 2017) weighs the channels of a convolutional stage's output by the gradient of the
class score, sums over channels, keeps the positive part and resizes to the input. Three choices make the map
point at the evidence (an outside check found the textbook map lighting the *other* class's quadrant):

- **Position by position** (gradient × activation, as HiResCAM, Draelos & Carin 2020), not by the gradient's
  spatial mean: the dense heads of LeNet, AlexNet and VGG weigh each position differently, and the mean cancels
  out where the evidence sits.
- **Against this image's typical activation**: gradient × (activation − the channel's spatial median in this
  image). Gradient × activation attributes against an all-zero feature map, so every position that is merely
  *background texture* counts as evidence too; a model that decides "B" partly because A's quadrant holds no
  patch then lights A's empty quadrant. Measured on LeNet-5 over dark-noise layouts (tests/test_explain_pointing):
  zero reference 0–12 % of maps with half their mass on the patch, median reference ≥ 95 %.
- **A stage fine enough to point**: the deepest marked stage with at least MIN_CAM_SIDE positions each way
  (`choose_stage`). A 4×4 last stage (ResNet-18 at 128 px) has receptive fields wider than the image and
  mislocalises (peak in the right quadrant 35 %); the stage before it (8×8) points (≥ 90 %). `cam_stages` lists
  what a model offers and the caller may choose another one.

The class score is the class's log-odds (see `_score`), not its bare logit, so that a shift every logit shares
does not show. MLPs get gradient × input against a black image, positive part, summed over channels: the
bare gradient of an MLP is nearly the same weight pattern for every image (it spreads over every position a
square could take), while × input keeps the pixels that carried the evidence. Logistic regression gets its
weight image for the class (|d logit / d pixel|), the explanation a linear model has. Maps are in [0, 1] at the
model's input height × width, for the predicted class unless one is given. One jitted function per model, stage
and batch size; images go through the checkpoint's PreprocessSpec like every prediction.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..data.preprocess import PreprocessSpec, check_pixels, normalize, standardize, to_unit
from ..models.layers import CAM_PREFIX
from ..models.mlp import MLP

__all__ = ["cam_stages", "choose_stage", "explain_pixels", "has_cam_layer"]


MIN_CAM_SIDE = 7  # the coarsest map Grad-CAM draws from: ResNet's layer4 at 224 px; coarser, an earlier stage


def cam_stages(model, variables: dict, shape: tuple[int, int, int]) -> dict[int, tuple[int, int]]:
    """{stage: (height, width)} of the convolutional stages the model marks for Grad-CAM (none for the MLPs)."""
    out = jax.eval_shape(lambda x: model.apply(variables, x, mutable=["intermediates"])[1],
                         jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    marked = out.get("intermediates", {})
    return {int(k.removeprefix(CAM_PREFIX)): tuple(v[0].shape[1:3]) for k, v in marked.items()
            if k.startswith(CAM_PREFIX)}


def choose_stage(stages: dict[int, tuple[int, int]]) -> int:
    """The deepest stage whose map has at least MIN_CAM_SIDE positions each way, else the finest one."""
    fine = [s for s, hw in stages.items() if min(hw) >= MIN_CAM_SIDE]
    return max(fine) if fine else min(stages)


def has_cam_layer(model, variables: dict, shape: tuple[int, int, int]) -> bool:
    """Whether the model marks a convolutional feature map for Grad-CAM (the CNNs do, the MLPs don't)."""
    return bool(cam_stages(model, variables, shape))


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


@partial(jax.jit, static_argnames=("model", "spec", "binary", "cam", "linear", "stage"))
def _explain(model, variables, pixels, classes, spec: PreprocessSpec, binary: bool, cam: bool, linear: bool,
             stage: int = 0):
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
        name = f"{CAM_PREFIX}{stage}"
        features = inter[name][0].astype(jnp.float32)  # (N, h, w, C)
        gradient = grads[name].astype(jnp.float32)
        reference = jnp.median(features, axis=(1, 2), keepdims=True)  # this image's typical activation
        maps = jax.nn.relu((gradient * (features - reference)).sum(axis=-1))
        maps = jax.image.resize(maps, (maps.shape[0], spec.height, spec.width), "bilinear")
    else:
        unit = to_unit(pixels)  # the image as light in [0, 1], 0 = black: the reference of the product
        grad = jax.grad(lambda u: _score(model.apply(variables, normalize(u, spec)), classes, binary,
                                         log_odds=not linear))(unit)
        maps = jnp.abs(grad).sum(axis=-1) if linear else jax.nn.relu((grad * unit).sum(axis=-1))
    return _normalise(jnp.maximum(maps, 0.0)), classes


def explain_pixels(model, variables: dict, spec: PreprocessSpec, binary: bool, pixels: np.ndarray,
                   classes: np.ndarray | None = None, stage: int | None = None,
                   stages: dict[int, tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (N, H, W) in [0, 1], the class index each map explains) for uint8 NHWC pixels. `stage`
    picks the convolutional stage the map comes from (one of `cam_stages`; default `choose_stage`'s); `stages`
    is `cam_stages`' answer when the caller already has it (the Predictor keeps it)."""
    pixels = check_pixels(pixels, spec)
    stages = cam_stages(model, variables, spec.shape) if stages is None else stages
    if stage is not None and stage not in stages:
        offered = ", ".join(f"{k} ({h}x{w})" for k, (h, w) in sorted(stages.items())) or "none (not a CNN)"
        raise ValueError(f"no convolutional stage {stage} to explain from; this model has: {offered}")
    cam = bool(stages)
    if cam and stage is None:
        stage = choose_stage(stages)
    chosen = None if classes is None else jnp.asarray(classes, jnp.int32)
    linear = isinstance(model, MLP) and not model.hidden_sizes
    maps, chosen = _explain(model, variables, jnp.asarray(pixels), chosen, spec, binary, cam, linear, stage or 0)
    return np.asarray(maps, np.float32), np.asarray(chosen)
