"""Batches with a fixed shape, fed from images decoded once.

Every batch is `{"image": uint8[B,H,W,C], "label": int32[B], "mask": bool[B]}` with the same B, so the
jitted steps compile once; the last partial batch is padded and its padding rows carry mask=False.

Small datasets (MNIST, digits, a few thousand photos) are decoded once into a uint8 array that lives on
the device(s); an epoch is then one permutation and a gather per batch, no host work. Datasets bigger than
`memory_budget` bytes (or half of the free memory) stream instead: decoded per batch by a thread pool, a
bounded queue ahead. Both are decided from the sizes before anything is decoded, and a batch too big for the
memory at all (`--size 30000`) is refused with a ValueError then.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..runtime.sharding import batch_sharding, data_mesh, local_rows, multi_process, replicated
from .dataset import Dataset
from .preprocess import ImageError, PreprocessSpec

log = logging.getLogger("jaxnets.data")

Batch = dict[str, jax.Array]
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of decoded uint8 pixels kept in memory before streaming instead
# batches alive at once: the one being built or used plus the prefetched ones (and XLA's temporaries)
BATCH_MEMORY_FACTOR = 2


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def available_memory() -> int | None:
    """Bytes of memory this process can still use: MemAvailable (Linux), else the physical memory, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


def check_batch_fits(spec: PreprocessSpec, batch_size: int, available: int | None) -> None:
    """Refuse, before anything is allocated, a batch that cannot fit in memory (a `--size 30000` typo would
    otherwise end in the OOM killer or a swap storm): B×H×W×C uint8 pixels on the host plus their float32
    copy on the device, times BATCH_MEMORY_FACTOR. `available` None (unknown) checks nothing."""
    pixels = batch_size * int(np.prod(spec.shape))
    needed = pixels * (1 + 4) * BATCH_MEMORY_FACTOR
    if available is not None and needed > available:
        h, w, c = spec.shape
        raise ValueError(
            f"size {h}×{w}×{c} with batch size {batch_size} needs about {_gib(needed)} per batch "
            f"({batch_size}×{h}×{w}×{c} uint8 pixels on the host + their float32 copy on the device, "
            f"×{BATCH_MEMORY_FACTOR} in flight) but only {_gib(available)} of memory is available; "
            f"use a smaller --size or --batch-size")


def decode_all(dataset: Dataset, spec: PreprocessSpec, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize every example once (thread pool; PIL releases the GIL while decoding).

    Unreadable files are dropped, reported with one warning each and recorded in `dataset.skipped`."""
    n = len(dataset)
    out = np.empty((n, *spec.shape), np.uint8)
    ok = np.ones(n, bool)

    def work(i: int) -> None:
        try:
            out[i] = dataset.pixels(i, spec)
        except ImageError as e:
            ok[i] = False
            dataset.skip(dataset.sources[i], str(e))

    if isinstance(dataset.sources, np.ndarray) or n < 64:
        for i in range(n):
            work(i)
    else:
        with ThreadPoolExecutor(_workers()) as pool, tqdm(
            total=n, desc=f"decoding {dataset.name or 'images'}", unit="img", disable=not progress, leave=False
        ) as bar:
            for _ in pool.map(work, range(n), chunksize=16):
                bar.update()
    if not ok.all():
        return out[ok], dataset.labels[ok]
    return out, dataset.labels


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """(index[steps, B], mask[steps, B]) for one epoch: a permutation from (seed, epoch), padded to full batches."""
    order = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n) if shuffle else np.arange(n)
    steps = max(1, -(-n // batch_size))
    pad = steps * batch_size - n
    # padding rows repeat the epoch's own order (masked out of loss and metrics): BatchNorm's batch statistics
    # then see a fair sample instead of one example copied many times
    index = np.resize(order, steps * batch_size).reshape(steps, batch_size)
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]).reshape(steps, batch_size)
    return index.astype(np.int32), mask


@dataclass
class Loader:
    """Iterates fixed-shape batches of one split. `epoch(e)` gives that epoch's batches."""

    dataset: Dataset
    spec: PreprocessSpec
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    progress: bool = False
    prefetch: int = 2

    def __post_init__(self):
        self.mesh = data_mesh()
        n_dev = self.mesh.size
        if self.batch_size % n_dev:
            raise ValueError(f"batch size {self.batch_size} must be a multiple of the {n_dev} devices")
        self.sharding = batch_sharding(self.mesh)
        # several processes: each decodes only the rows of each global batch its devices hold (streamed)
        self.rows = local_rows(self.sharding, self.batch_size) if multi_process() else slice(None)
        available = available_memory()
        check_batch_fits(self.spec, self.batch_size, available)
        # decided from the sizes alone, before any decoding: the cache would be n × H × W × C bytes, held on the
        # host while decoding and again on the device, so it must also fit in half of the free memory
        budget = self.memory_budget if available is None else min(self.memory_budget, available // 2)
        self.streaming = self.cache_bytes > budget or multi_process()
        if not self.streaming:
            images, labels = decode_all(self.dataset, self.spec, self.progress)
            if len(labels) == 0:
                raise ValueError(f"no readable image in {self.dataset.name or 'the dataset'}")
            self.labels = labels
            self._images = jax.device_put(images, replicated(self.mesh))
            self._labels = jax.device_put(labels, replicated(self.mesh))
            self._n = len(labels)
            self._gather = jax.jit(_gather, out_shardings=self.sharding)
        else:
            self.labels = self.dataset.labels  # decoded as it streams: unreadable files are found then
            self._n = len(self.dataset)

    @property
    def cache_bytes(self) -> int:
        """Bytes the decode-once cache of this dataset takes (uint8 pixels)."""
        return len(self.dataset) * int(np.prod(self.spec.shape))

    def __len__(self) -> int:
        """Real examples per epoch (after dropping unreadable files, when cached)."""
        return self._n

    @property
    def steps_per_epoch(self) -> int:
        return max(1, -(-self._n // self.batch_size))

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        index, mask = epoch_order(self._n, self.batch_size, self.seed, epoch, self.shuffle)
        if not self.streaming:
            for idx, m in zip(index, mask, strict=True):
                yield self._gather(self._images, self._labels, idx, m)
            return
        yield from _prefetched(self._stream(index[:, self.rows], mask[:, self.rows]), self.prefetch)

    def _stream(self, index: np.ndarray, mask: np.ndarray) -> Iterator[Batch]:
        def decode(i: int, m: bool) -> tuple[np.ndarray, bool]:
            if not m:
                return np.zeros(self.spec.shape, np.uint8), False
            try:
                return self.dataset.pixels(i, self.spec), True
            except ImageError as e:  # a file that broke since the scan: masked out, reported, epoch goes on
                self.dataset.skip(self.dataset.sources[i], str(e))
                return np.zeros(self.spec.shape, np.uint8), False

        with ThreadPoolExecutor(_workers()) as pool:
            for idx, m in zip(index, mask, strict=True):
                rows = list(pool.map(decode, idx, m))
                batch = {
                    "image": np.stack([r[0] for r in rows]),
                    "label": self.dataset.labels[idx],
                    "mask": np.asarray([r[1] for r in rows]),
                }
                yield self._place(batch)

    def _place(self, batch: dict[str, np.ndarray]) -> Batch:
        """Host rows → the global batch on the mesh (this process's share of it, with several processes)."""
        if not multi_process():
            return jax.device_put(batch, self.sharding)
        return {k: jax.make_array_from_process_local_data(self.sharding, v, (self.batch_size, *v.shape[1:]))
                for k, v in batch.items()}


def _gather(images, labels, idx, mask) -> Batch:
    return {"image": jnp.take(images, idx, axis=0), "label": jnp.take(labels, idx, axis=0), "mask": jnp.asarray(mask)}


def _prefetched(it: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run an iterator in a background thread, `depth` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()

    def run():
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=run, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
