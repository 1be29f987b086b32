"""An explanation map drawn over the image it explains (PNG bytes; nothing here touches files)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 H×W×3: the pixels (as the model saw them) with the [0, 1] map in a colour scale (jet) blended over."""
    from matplotlib import colormaps  # a colour table only: no backend, nothing process-wide

    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    colour = (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.float32)
    blend = (1 - alpha) * rgb.astype(np.float32) + alpha * colour
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def overlay_png(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """`overlay` as PNG bytes, at the model's input size."""
    out = io.BytesIO()
    Image.fromarray(overlay(pixels, heat, alpha)).save(out, format="PNG")
    return out.getvalue()
