"""Process-wide settings: made only by `tune_process()`, never by an import or a library call.

jaxnets is a guest in the processes that embed it (a notebook, a web app that predicts): importing it, building
a `Predictor`, evaluating, exporting or training with `fit` leave glibc's malloc, the environment, thread counts
and signal handlers as they were. Where jaxnets owns the process — the `jaxnets` command, the model service's
worker — or where a user asks for it, one call, `jaxnets.runtime.tune_process()`, made first thing (before JAX
starts its backend), tunes glibc's malloc for XLA:CPU's step buffers (docs/backends.md; the measurements are in
docs/bench/history.md):

- `share_one_arena`: threads that have not allocated yet (XLA's workers) take their memory from the main heap,
  which keeps up to 64 MB free at its top and serves blocks up to 32 MB itself;
- once a train step is built in a tuned process (`training_process`), the main heap serves blocks of any size
  and is never trimmed (`keep_freed_memory`), so a step's buffers are reused instead of page-faulted in again;
  `release_training_memory` (when `fit` returns) hands the kept memory back.

`JAXNETS_CPU_MALLOC=system` makes `tune_process` leave glibc's defaults; on a machine without glibc, or a process
that computes on an accelerator, it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

MALLOC_ENV = "JAXNETS_CPU_MALLOC"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for it on 64-bit machines
SHARED_TRIM_THRESHOLD = 64 * 2**20  # free memory at the top of the heap beyond this goes back to the kernel
TRAINING_TRIM_THRESHOLD = 2**31 - 1  # the largest mallopt takes: a training process's heap is never trimmed

_asked = False  # whether this process's owner called tune_process()
_kept = False  # whether training_process kept the heap's freed memory


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where the C library is not glibc or `JAXNETS_CPU_MALLOC=system` asks for its
    defaults."""
    choice = os.environ.get(MALLOC_ENV, "keep").lower()
    if choice not in ("keep", "system"):
        raise ValueError(f"{MALLOC_ENV} must be 'keep' or 'system', got {choice!r}")
    if choice == "system" or not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # musl: no mallopt
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _cpu_process() -> bool:
    """Whether JAX will compute on the CPU here, known without starting a backend (that would start XLA's threads):
    no JAX_PLATFORMS naming only accelerators, no accelerator plugin installed."""
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
    return not any(importlib.util.find_spec(name) is not None for name in plugins)


def tune_process() -> bool:
    """The one call that changes process-wide settings (see the module docstring): for the `jaxnets` command, the
    model service's worker, or a user who wants jaxnets' CPU tuning in their own process. Call it first, before
    JAX starts its backend (a thread's first malloc binds it to an arena). Returns whether malloc was tuned. It
    never raises: an unknown `JAXNETS_CPU_MALLOC` sets nothing here and is refused, as a ValueError, when the
    first train step is built."""
    global _asked
    _asked = True
    try:
        return share_one_arena()
    except ValueError:
        return False


@functools.cache
def share_one_arena() -> bool:
    """Threads that have not allocated yet take their memory from the main heap, the only place
    `keep_freed_memory` can keep a block above 64 MB; the heap keeps a step's smaller blocks too. Only where JAX
    will compute on the CPU. True when set."""
    mallopt = _mallopt()
    if mallopt is None or not _cpu_process():
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, SHARED_TRIM_THRESHOLD), (_M_ARENA_MAX, 1))
    return all([mallopt(option, value) for option, value in settings])


@functools.cache
def keep_freed_memory() -> bool:
    """A process that trains: the main heap serves blocks of every size and is never trimmed. True when set,
    False where there is no glibc or `JAXNETS_CPU_MALLOC=system`."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD))
    return all([mallopt(option, value) for option, value in settings])


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the kernel (glibc's malloc_trim). True when memory was returned."""
    try:
        if _mallopt() is None:
            return False
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError, ValueError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def training_process(cpu_backend: bool) -> bool:
    """Called where a train step is built: in a process whose owner called `tune_process`, on CPU, the heap keeps
    a step's freed memory for the next one. Anywhere else nothing. True when set."""
    global _kept
    _kept = _kept or bool(_asked and cpu_backend and keep_freed_memory())
    return _kept


def release_training_memory() -> bool:
    """Called when training ends: the memory `training_process` kept goes back to the kernel (only where it was
    kept: an untuned heap trims itself)."""
    return _kept and release_freed_memory()
