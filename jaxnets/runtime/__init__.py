"""Backend-specific speed options, switched on by the platform a computation runs on, never by model fields.

`runtime.jit` is `jax.jit` for jaxnets' own steps (train, eval, predict, bench). On XLA:CPU it adds what
the CPU backend's defaults leave on the table: compiler options, and jaxnets' layers traced with XLA:CPU's
versions of their functions (`cpu.layer_ops()`, through `models.layers.use_layer_ops`, the one extension point;
docs/architecture.md). On GPU/TPU it is plain `jax.jit` and the layers are plain lax.

Nothing in jaxnets changes a process-wide setting (malloc, environment, threads, signals) on import or in a call,
except `tune_process()`, the one call for a process jaxnets owns or whose owner asks for it (host.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from . import cpu, host
from .host import tune_process

__all__ = ["cpu", "jit", "release_training_memory", "training_process", "tune_process"]


def jit(fun: Callable, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)` plus the speed options of the default backend."""
    if jax.default_backend() != "cpu":
        return jax.jit(fun, **kwargs)
    options = cpu.compiler_options()
    traced = cpu.with_cpu_kernels(fun)
    return jax.jit(traced, compiler_options=options, **kwargs) if options else jax.jit(traced, **kwargs)


def training_process() -> None:
    """Where a train step is built: in a process tuned by `tune_process()` (the `jaxnets` command), on CPU, glibc
    keeps a step's freed memory for the next one (runtime/host.py). Elsewhere — a notebook calling `fit`, a
    process that only predicts — nothing: jaxnets changes no process-wide setting it was not asked to."""
    host.training_process(jax.default_backend() == "cpu")


def release_training_memory() -> None:
    """When training ends: the free memory that `training_process` kept goes back to the kernel (malloc_trim)."""
    host.release_training_memory()
