"""An explanation map drawn over the image it explains (PNG bytes; nothing here touches files)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# matplotlib's "jet" (its segment data, sampled into its 256-entry table): the same colours without matplotlib
_JET = {"red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))}
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), *zip(*_JET[c], strict=True)) for c in ("red", "green", "blue")],
                axis=-1)


def jet(heat: np.ndarray) -> np.ndarray:
    """[0, 1] values → float RGB in [0, 1], as `matplotlib.colormaps["jet"](heat)[..., :3]` gives them."""
    index = np.minimum((np.nan_to_num(np.clip(heat, 0, 1)) * 256).astype(np.int64), 255)
    return _LUT[index]


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 H×W×3: the pixels (as the model saw them) with the [0, 1] map in a colour scale (jet) blended over."""
    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    colour = (jet(heat) * 255).astype(np.float32)
    blend = (1 - alpha) * rgb.astype(np.float32) + alpha * colour
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def overlay_png(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """`overlay` as PNG bytes, at the model's input size."""
    out = io.BytesIO()
    Image.fromarray(overlay(pixels, heat, alpha)).save(out, format="PNG")
    return out.getvalue()
