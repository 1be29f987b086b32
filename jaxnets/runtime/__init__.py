"""Backend-specific speed options, switched on by the platform a computation runs on, never by model fields.

`runtime.jit` is `jax.jit` for jaxnets' own steps (train, eval, predict, bench). On XLA:CPU it adds what
the CPU backend's defaults leave on the table (see cpu.py); on GPU/TPU it is plain `jax.jit` and the
models are plain Flax.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from . import cpu

__all__ = ["cpu", "jit", "release_training_memory", "training_process"]


def jit(fun: Callable, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)` plus the speed options of the default backend."""
    if jax.default_backend() != "cpu":
        return jax.jit(fun, **kwargs)
    options = cpu.compiler_options()
    traced = cpu.with_cpu_kernels(fun)
    return jax.jit(traced, compiler_options=options, **kwargs) if options else jax.jit(traced, **kwargs)


def training_process() -> None:
    """Process-wide settings for a process that runs training steps: on CPU, glibc keeps the freed memory of a
    step for the next one (cpu.keep_freed_memory). Not for a process that only predicts (the service): there
    the default thresholds hand memory back between requests."""
    if jax.default_backend() == "cpu":
        cpu.keep_freed_memory()


def release_training_memory() -> None:
    """When training ends: on CPU, the free memory that `training_process` kept for the next step goes back to the
    kernel (cpu.release_freed_memory)."""
    if jax.default_backend() == "cpu":
        cpu.release_freed_memory()
