"""Backend-specific speed options, switched on by the platform a computation runs on, never by model fields.

`runtime.jit` is `jax.jit` for jaxnets' own steps (train, eval, predict, bench). On XLA:CPU it adds what
the CPU backend's defaults leave on the table (see cpu.py); on GPU/TPU it is plain `jax.jit` and the
models are plain Flax.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from . import cpu

__all__ = ["cpu", "jit"]


def jit(fun: Callable, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)` plus the speed options of the default backend."""
    if jax.default_backend() != "cpu":
        return jax.jit(fun, **kwargs)
    options = cpu.compiler_options()
    cpu.keep_freed_memory()
    traced = cpu.with_narrow_convs(fun)
    return jax.jit(traced, compiler_options=options, **kwargs) if options else jax.jit(traced, **kwargs)
