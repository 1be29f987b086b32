"""Helpers that write real image files (good and broken) for the tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(label: int, size: int = 16, channels: int = 3) -> np.ndarray:
    """A class-dependent picture: class 0 bright on the left, class 1 bright on the right (+ noise)."""
    rng = np.random.default_rng(label * 1000 + size)
    img = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
    half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    img[:, half] += 150
    return img


def write_image(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze() if array.shape[-1] == 1 else array).save(path, **save_kwargs)
    return path


def write_class_folder(root: Path, classes=("cat", "dog"), per_class: int = 10, size: int = 16) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.png", pattern(c % 2, size))
    return root


def truncated_jpeg(path: Path) -> Path:
    write_image(path, pattern(0, 64), format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A small PNG whose header claims width×height pixels: a decompression bomb as Pillow sees it."""
    write_image(path, np.zeros((4, 4), np.uint8))
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def palette_with_transparency(rgb: np.ndarray, path_or_buffer) -> None:
    """Save `rgb` as a palette PNG whose colour at (0, 0) is transparent (mode P + a tRNS chunk): the
    palette + alpha case, written so that it really is one (checked by the caller)."""
    img = Image.fromarray(rgb).convert("P")
    img.save(path_or_buffer, format="PNG", transparency=img.getpixel((0, 0)))
