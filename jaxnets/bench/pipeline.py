"""The input side of training: a dataset's decode and cached epochs (`bench data`), the train step's on-device
input pipeline alone (`bench augment`), and whole epochs on real data through `fit` (`bench epoch`)."""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

import jax
import numpy as np

from .steps import device_name


def bench_data(data: str, size: int, batch: int, channels: int = 3, epochs: int = 3) -> dict[str, Any]:
    """First epoch (decode + resize + to device) and cached epochs (batches ready on the device)."""
    from ..data import Loader, PreprocessSpec, load_dataset

    splits = load_dataset(data, val_split=0.0, test_split=0.0)
    spec = PreprocessSpec(size, size, channels)
    t0 = time.perf_counter()
    loader = Loader(splits.train, spec, batch, shuffle=True)
    jax.block_until_ready(deque(loader.epoch(0), maxlen=1)[0])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for e in range(1, epochs + 1):
        jax.block_until_ready(deque(loader.epoch(e), maxlen=1)[0])
    cached = (time.perf_counter() - t0) / epochs
    return {"data": data, "size": size, "batch": batch, "images": len(loader), "skipped": len(splits.skipped),
            "first_epoch_images_per_s": round(len(loader) / first, 1),
            "cached_images_per_s": round(len(loader) / cached, 1), "device": device_name()}


def bench_augment(augment: str, mixup: float, cutmix: float, erase: float, size: int, batch: int,
                  channels: int = 3, steps: int = 10) -> dict[str, Any]:
    """The train step's input pipeline alone (augmentation, MixUp/CutMix, erasing, normalisation) on a random
    uint8 batch on the device: what it adds to every step of a run with those options."""
    from .. import runtime
    from ..data.augment import get_augment
    from ..data.mix import MixSpec
    from ..data.preprocess import PreprocessSpec
    from ..train.steps import StepConfig, step_inputs

    cfg = StepConfig(PreprocessSpec(size, size, channels, normalize="imagenet"), 2, True,
                     augment=get_augment(augment), mix=MixSpec(mixup, cutmix), erase=erase)
    rng = np.random.default_rng(0)
    data = jax.device_put({"image": rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8),
                           "label": rng.integers(0, 2, batch).astype(np.int32), "mask": np.ones(batch, bool)})
    run = runtime.jit(lambda key, b: step_inputs(key, b, cfg)[0])
    jax.block_until_ready(run(jax.random.key(0), data))
    t0 = time.perf_counter()
    for i in range(steps):
        out = run(jax.random.key(i + 1), data)
    jax.block_until_ready(out)
    ms = (time.perf_counter() - t0) / steps * 1e3
    return {"augment": augment, "mixup": mixup, "cutmix": cutmix, "erase": erase, "size": size, "batch": batch,
            "ms_per_batch": round(ms, 2), "images_per_s": round(batch / ms * 1e3, 1), "device": device_name()}


def bench_epoch(model: str, data: str, size: int | None, batch: int, epochs: int, resize: str = "stretch",
                channels: int | None = None, lr: float = 1e-3, out: str | None = None,
                dtype: str = "float32") -> dict[str, Any]:
    """Whole training epochs on real data, input pipeline included (decode once, then cached)."""
    import tempfile

    from ..train import OptimConfig, TrainConfig, fit

    out = out or tempfile.mkdtemp(prefix="jaxnets-bench-")
    t0 = time.perf_counter()
    result = fit(TrainConfig(model=model, data=data, size=size, channels=channels, resize=resize, epochs=epochs,
                             batch_size=batch, optim=OptimConfig(lr=lr), val_split=0.0, test_split=0.0, dtype=dtype,
                             monitor="train_accuracy", out=out, overwrite=True, quiet=True))
    total = time.perf_counter() - t0
    seconds = [h["seconds"] for h in result.history]
    return {"model": model, "data": data, "size": size, "batch": batch, "epochs": epochs, "dtype": dtype,
            "seconds_per_epoch": round(statistics.median(seconds), 3),
            "first_epoch_s": round(seconds[0], 3),
            "images_per_s": round(statistics.median(h["images_per_s"] for h in result.history), 1),
            "wall_s_including_decode_and_compile": round(total, 1),
            "train_accuracy": round(result.history[-1]["train_accuracy"], 4), "device": device_name()}
