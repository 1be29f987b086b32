"""Per-step XLA compiler options: where the CPU backend's defaults leave speed on the table.

XLA:CPU can hand each dot (and the dots its convolution rewrites produce, forward and backward) to the
YNNPACK library instead of its own emitted loops. Measured on the developers' 2-core Zen 4 machine
(BENCHMARKS.md, "What was tried"): a 3×3 64→64 convolution's forward+backward on 32×32 maps runs
184 ms → 43 ms, ResNet-18 training 1.6–2× faster; only a matrix-vector product (logistic regression's
single output) gets slower, so that model keeps XLA's own code.

The options go to `jax.jit(..., compiler_options=...)` of our own steps only, never to the process-wide
XLA_FLAGS, so they cannot change anything else a user compiles. `JAXNETS_CPU_DOTS=xla` turns them off.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

YNN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
ENV = "JAXNETS_CPU_DOTS"


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib knows the options (they are experimental: a newer or older one may not)."""
    try:
        jax.jit(lambda a: a @ a, compiler_options=dict(options)).lower(jnp.ones((2, 2))).compile()
        return True
    except Exception:  # an unknown option or enum value is an XLA error
        return False


def _is_matrix_vector(model) -> bool:
    hidden = getattr(model, "hidden_sizes", None)
    return hidden is not None and len(hidden) == 0


def compiler_options(model=None) -> dict[str, Any] | None:
    """The options for the jitted steps of `model` on the default backend, or None for XLA's defaults."""
    choice = os.environ.get(ENV, "ynn").lower()
    if choice not in ("ynn", "xla"):
        raise ValueError(f"{ENV} must be 'ynn' or 'xla', got {choice!r}")
    if choice == "xla" or jax.default_backend() != "cpu" or _is_matrix_vector(model):
        return None
    return dict(YNN_DOTS) if _accepted(tuple(YNN_DOTS.items())) else None


def jit(fun: Callable, model=None, **kwargs) -> Callable:
    """`jax.jit` with the compiler options chosen for `model`."""
    options = compiler_options(model)
    return jax.jit(fun, compiler_options=options, **kwargs) if options else jax.jit(fun, **kwargs)
