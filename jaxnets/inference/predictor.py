"""Predictor: a checkpoint directory in, probabilities out. Needs no training code path and no dataset.

Images go through the checkpoint's PreprocessSpec (the one preprocessing path) and the same eval-mode
`forward` as the eval step. Batches are padded to a few fixed bucket sizes so that any request size
runs on an already-compiled function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import runtime
from ..checkpoint import Checkpoints
from ..data.preprocess import DEFAULT_MAX_PIXELS, ImageLike, check_pixels, to_pixels
from ..integrity import CHECKSUMS, MODEL_CARD, CheckpointError, find_checkpoint_dir
from ..models import create_model, init_variables
from .answers import describe, non_finite_rows
from .card import ModelCard, check_card_matches_step, read_card
from .scoring import forward, log_probabilities, probabilities

DEFAULT_BUCKETS = (1, 8, 32)
TTA = (None, "flip")  # test-time augmentations predict_pixels knows

__all__ = ["DEFAULT_BUCKETS", "NonFiniteOutputError", "Predictor", "describe", "restore_model"]


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinite probabilities: its weights are broken, so no answer is given."""


def verified_step(checkpoints: Checkpoints, card: ModelCard, which: str | int) -> int:
    """The step `which` names, once the card is checked against the card saved inside the newest whole step
    (before anything reads the card's monitor to find "best") and inside the step itself."""
    steps = sorted(checkpoints.all_steps(), reverse=True)
    saved = [s for s in steps if (checkpoints.step_dir(s) / CHECKSUMS).is_file()]
    if saved:  # the newest whole step (a step a kill left half-saved has no checksums yet)
        check_card_matches_step(card, checkpoints.step_dir(saved[0]))
    step = checkpoints.resolve(which)
    if not saved or step != saved[0]:
        check_card_matches_step(card, checkpoints.step_dir(step))
    return step


def uses_weight_average(card: ModelCard) -> bool:
    """Whether the run kept an exponential moving average of its weights (then it is what users get)."""
    return bool((card.train_config or {}).get("ema"))


def restore_model(path: str | Path, which: str | int = "best") -> tuple[Any, dict, ModelCard, int]:
    """(model, variables, card, step) of a checkpoint, its files verified; nothing of the optimizer is read."""
    directory = find_checkpoint_dir(path)
    card = read_card(directory)
    try:
        model = create_model(card.model, card.num_outputs, **card.model_options)
    except ValueError as e:  # a card naming a model or option this jaxnets does not have
        raise CheckpointError(f"{directory / MODEL_CARD}: {e}") from None
    template = jax.eval_shape(lambda: init_variables(model, card.input_shape, 0))
    template = {"params": template["params"], "batch_stats": template.get("batch_stats", {})}
    item = "ema" if uses_weight_average(card) else "model"  # a run with --ema is evaluated and served with it
    checkpoints = Checkpoints(directory, card.monitor, read_only=True)
    try:
        step = verified_step(checkpoints, card, which)
        restored, step = checkpoints.restore_variables(step, template, item)
    finally:
        checkpoints.close()
    variables = {"params": restored["params"]}
    if restored.get("batch_stats"):
        variables["batch_stats"] = restored["batch_stats"]
    return model, variables, card, step


class Predictor:
    """Probabilities for images, from plain variables and the card's preprocessing."""

    def __init__(self, model, variables: dict, card: ModelCard, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 max_pixels: int = DEFAULT_MAX_PIXELS, step: int | None = None):
        self.model, self.variables, self.card, self.step = model, variables, card, step
        self.classes: list[str] = list(card.classes)
        self.binary: bool = card.binary
        self.spec = card.preprocess
        self.buckets = tuple(sorted(set(buckets)))
        self.max_pixels = max_pixels
        self._cam_stages: dict[int, tuple[int, int]] | None = None  # found on the first explanation
        apply = forward(model, self.spec)
        self._probabilities = runtime.jit(lambda v, images: probabilities(apply(v, images), self.binary))
        self._log_probabilities = runtime.jit(lambda v, images: log_probabilities(apply(v, images), self.binary))

    @classmethod
    def from_checkpoint(cls, path: str | Path, which: str | int = "best", **kwargs) -> Predictor:
        """`path` is a run directory, its checkpoints/ folder or a packaged model; `which` is "best", "latest"
        or an epoch number."""
        model, variables, card, step = restore_model(path, which)
        return cls(model, variables, card, step=step, **kwargs)

    # -------------------------------------------------------------------------------------------- pieces

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """(start, bucket) pairs covering n rows with the compiled bucket sizes."""
        out, start, largest = [], 0, self.buckets[-1]
        while start < n:
            remaining = n - start
            bucket = largest if remaining >= largest else next(b for b in self.buckets if b >= remaining)
            out.append((start, bucket))
            start += min(bucket, remaining)
        return out

    def warmup(self) -> None:
        """Compile every bucket now, so that no request pays for compilation."""
        for bucket in self.buckets:
            self._probabilities(self.variables, jnp.zeros((bucket, *self.spec.shape), jnp.uint8)).block_until_ready()

    # -------------------------------------------------------------------------------------------- predicting

    def pixels(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Decode images through the checkpoint's PreprocessSpec. Raises ImageError for a bad one."""
        return np.stack([to_pixels(img, self.spec, self.max_pixels) for img in images]) if len(images) else \
            np.zeros((0, *self.spec.shape), np.uint8)

    def predict_pixels(self, pixels: np.ndarray, tta: str | None = None) -> np.ndarray:
        """uint8 [N,H,W,C] → probabilities [N, classes], in fixed-size padded batches. `tta="flip"` averages them
        with the horizontally flipped images' (right for photos, wrong for digits or text: off by default)."""
        if tta not in TTA:
            raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(map(str, TTA))}")
        probs = self._in_buckets(self._probabilities, pixels)
        if tta == "flip":
            probs = (probs + self._in_buckets(self._probabilities, np.asarray(pixels)[:, :, ::-1])) / 2
        return probs

    def log_probabilities_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W,C] → log probabilities [N, classes]: losses that stay finite where a probability is 0."""
        return self._in_buckets(self._log_probabilities, pixels)

    def _in_buckets(self, function, pixels: np.ndarray) -> np.ndarray:
        pixels = check_pixels(pixels, self.spec)
        n = len(pixels)
        out = np.empty((n, len(self.classes)), np.float32)
        for start, bucket in self._chunks(n):
            chunk = pixels[start:start + bucket]
            rows = len(chunk)
            if rows < bucket:
                chunk = np.concatenate([chunk, np.zeros((bucket - rows, *chunk.shape[1:]), np.uint8)])
            out[start:start + rows] = np.asarray(function(self.variables, chunk))[:rows]
        return out

    @property
    def cam_stages(self) -> dict[int, tuple[int, int]]:
        """{stage: (height, width)} of the convolutional stages Grad-CAM can explain from ({} for the MLPs)."""
        if self._cam_stages is None:  # traced once per Predictor, not per explanation
            from .explain import cam_stages

            self._cam_stages = cam_stages(self.model, self.variables, self.spec.shape)
        return self._cam_stages

    @property
    def cam_stage(self) -> int | None:
        """The stage explanations come from unless one is asked for (None for the MLPs): see choose_stage."""
        from .explain import choose_stage

        return choose_stage(self.cam_stages) if self.cam_stages else None

    def explain_pixels(self, pixels: np.ndarray, classes: Sequence[int] | None = None, stage: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N,H,W,C] → (maps float32 [N,H,W] in [0, 1], class index each map explains): Grad-CAM for the
        CNNs (from `stage`, default `cam_stage`), gradient × input for the MLPs (inference/explain.py), for the
        predicted class unless `classes` names one per image. Padded to the same buckets as predictions."""
        from .explain import explain_pixels

        n = len(pixels)
        maps = np.empty((n, self.spec.height, self.spec.width), np.float32)
        chosen = np.empty(n, np.int64)
        for start, bucket in self._chunks(n):
            chunk = pixels[start:start + bucket]
            rows = len(chunk)
            pad = bucket - rows
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.uint8)])
            wanted = None if classes is None else np.pad(np.asarray(classes[start:start + rows]), (0, pad))
            m, c = explain_pixels(self.model, self.variables, self.spec, self.binary, chunk, wanted, stage,
                                  self.cam_stages)
            maps[start:start + rows], chosen[start:start + rows] = m[:rows], c[:rows]
        return maps, chosen

    def describe(self, probs: np.ndarray, top_k: int = 5) -> list[dict[str, Any]]:
        return describe(probs, self.classes, top_k)

    def predict(self, images: Sequence[ImageLike] | ImageLike, top_k: int = 5,
                tta: str | None = None) -> list[dict[str, Any]]:
        """PIL images, paths, bytes or uint8 arrays → one result dict per image (see `describe`); `tta` as for
        `predict_pixels`."""
        if isinstance(images, (str, Path, bytes, bytearray)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
            images = [images]
        probs = self.predict_pixels(self.pixels(list(images)), tta)
        if non_finite_rows(probs):
            raise NonFiniteOutputError(f"{self.card.model} produced non-finite probabilities: its weights "
                                       f"(restored step {self.step}) are broken")
        return self.describe(probs, top_k)
