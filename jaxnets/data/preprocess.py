"""The one preprocessing path, shared by training, evaluation, `Predictor` and the service.

Two halves, split where the cache sits:
  * `to_pixels(image, spec)` (host, once per image): decode, fix orientation and mode, resize → uint8 HWC.
    The loader caches its output, so PIL is never touched again in the epoch loop.
  * `standardize(batch_uint8, spec)` (device, inside the jitted steps): `to_unit` (uint8 → [0, 1], the one
    scaling) then `normalize` (mean/std) → float32 model input.
Training may put augmentation between the two (`augment.py`); nothing else does.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "none": ((0.0,), (1.0,)),
    "half": ((0.5,), (0.5,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
RESIZE_MODES = ("stretch", "crop", "pad")
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo is fine; a decompression bomb is not


class ImageError(ValueError):
    """An input that is not a usable image. The message says why, in words a user can act on."""


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects. Saved with every checkpoint, so serving reproduces training exactly.

    resize: "stretch" (to height×width), "crop" (shorter side to size / crop_pct, then the centre
    height×width), or "pad" (centre the image, shrinking it only if it does not fit: MNIST 28×28 → LeNet's 32×32).
    crop_pct: the share of the shorter side "crop" keeps; torchvision's ImageNet evaluation (shorter side 256,
    centre 224) is 0.875.
    normalize: "none" ([0, 1]), "half" ((x - 0.5) / 0.5) or "imagenet" (per-channel mean/std).
    """

    height: int
    width: int
    channels: int = 3
    resize: str = "stretch"
    normalize: str = "none"
    crop_pct: float = 1.0

    def __post_init__(self):
        sizes = (self.height, self.width, self.channels)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
            raise ValueError(f"height, width and channels must be whole numbers, got {sizes}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; choose one of: {', '.join(RESIZE_MODES)}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {self.normalize!r}; choose one of: {', '.join(NORMALIZATIONS)}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be positive, got {self.height}×{self.width}")
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) or not (
                0.25 <= self.crop_pct <= 1):
            raise ValueError(f"crop_pct must be a share of the image in [0.25, 1], got {self.crop_pct!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean, std = NORMALIZATIONS[self.normalize]
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if self.channels == 1 and mean.size == 3:  # ImageNet stats on grey images: the luminance average
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return mean, std

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        return cls(**{k: d[k] for k in ("height", "width", "channels", "resize", "normalize", "crop_pct") if k in d})


def open_image(source: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a path, bytes or array as a PIL image, refusing what is not a sane image with an ImageError."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _array_to_image(source)
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError("empty file (0 bytes)")
            img = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if path.stat().st_size == 0:
                raise ImageError("empty file (0 bytes)")
            img = Image.open(path)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot open image: {e}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}×{height} = {width * height:,} pixels, above the limit of {max_pixels:,}")
    return img


def _array_to_image(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be HW, HW1, HW3 or HW4, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode → "L" or "RGB": transparency composited on white, 16/32-bit scaled, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img) * (255.0 if np.asarray(img).max() <= 1 else 1), 0, 255)
                              .astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def _resize(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    w, h = img.size
    tw, th = spec.width, spec.height
    if spec.resize == "stretch":
        return img if (w, h) == (tw, th) else img.resize((tw, th), Image.BILINEAR)
    if spec.resize == "crop":
        scale = max(tw / w, th / h) / spec.crop_pct
        nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - tw) // 2, (nh - th) // 2
        return img.crop((left, top, left + tw, top + th))
    # pad: centre, shrinking first only when the image does not fit
    scale = min(1.0, tw / w, th / h)
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    canvas = Image.new(img.mode, (tw, th), 0)
    canvas.paste(img, ((tw - img.size[0]) // 2, (th - img.size[1]) // 2))
    return canvas


def to_pixels(source: ImageLike, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image into the uint8 (height, width, channels) array the model's input is made from.

    Raises ImageError for anything that is not a readable image (empty, truncated, not an image,
    above `max_pixels`)."""
    img = open_image(source, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if img.format == "JPEG":
                # decode big JPEGs at a reduced scale (DCT scaling): much faster, never below the target size
                img.draft("L" if spec.channels == 1 else "RGB", (spec.width, spec.height))
            img = ImageOps.exif_transpose(img)
            img = _resize(_to_mode(img, spec.channels), spec)
            a = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot decode image: {e}") from None
    return a.reshape(spec.shape)


def to_unit(images):
    """uint8 pixels → float32 in [0, 1]: the one place pixels are scaled. Anything but uint8 is refused, so
    that a float batch already in [0, 1] (or still in 0–255) can never be scaled twice, or not at all."""
    if images.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8 (as to_pixels makes them), got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)  # numpy or jax arrays alike: no JAX import here


def normalize(x, spec: PreprocessSpec):
    """[0, 1] float → the model's input (the spec's mean/std). Refuses uint8: scale with `to_unit` first."""
    if x.dtype == np.uint8:
        raise TypeError("normalize takes [0, 1] floats; scale uint8 pixels with to_unit first")
    mean, std = spec.mean_std()
    return (x - mean) / std


def check_pixels(pixels, spec: PreprocessSpec) -> np.ndarray:
    """The pixels as a uint8 (N, H, W, C) array of the spec's shape, or a ValueError that says what was given:
    the array entry points take decoded pixels, and a shape error from deep inside a trace helps nobody."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != spec.shape:
        raise ValueError(f"pixels must be uint8 of shape (N, {spec.height}, {spec.width}, {spec.channels}) "
                         f"(Predictor.pixels makes them from images), got {pixels.dtype} {pixels.shape}")
    return pixels


def standardize(images, spec: PreprocessSpec):
    """uint8 NHWC → normalised float32 model input (to_unit, then normalize). Runs inside the jitted steps;
    training puts its augmentation between the two halves."""
    return normalize(to_unit(images), spec)


def model_input(source: ImageLike, spec: PreprocessSpec) -> np.ndarray:
    """One image → float32 model input (H, W, C): the composition of the two halves above."""
    return np.asarray(standardize(to_pixels(source, spec)[None], spec)[0])
