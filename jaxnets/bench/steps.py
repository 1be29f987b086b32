"""Synthetic steps: one train or predict step of a model on one random batch already on the device, timed
(`bench train/predict`) or traced per XLA operation (`bench profile`); the device and machine they ran on, and
the model's forward FLOPs from XLA's cost analysis."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, so a second run of the same model starts without recompiling."""
    cache = os.environ.get("JAXNETS_COMPILATION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxnets", "xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":") + f" x{jax.device_count()}"


def forward_flops_per_image(model, variables, shape) -> float | None:
    """Forward FLOPs of one image from XLA's cost analysis of the eval forward as lowered, before any backend
    compiles it: there every convolution is still a convolution (a GPU's compiled module has them as cuDNN calls,
    which its cost analysis counts as nothing). `variables` may be arrays or their shapes."""
    try:
        lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
            variables, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best effort and backend-dependent
        return None


class StepRunner(NamedTuple):
    """One train or predict step on one synthetic batch already on the device: what `bench train/predict` times
    and `bench profile` traces."""

    run: Callable[[Any], tuple[Any, Any]]  # state -> (state, output)
    state: Any
    model: Any
    spec: Any
    hlo: Callable[[Any], str]  # state -> the compiled step's HLO text


def step_runner(mode: str, model_name: str, batch: int, size: int, channels: int | None = None,
                dtype: str = "float32", num_classes: int | None = None, lr: float | None = None,
                options: dict | None = None) -> StepRunner:
    """The step of `mode` for `model_name` on a random batch (see StepRunner)."""
    from .. import runtime
    from ..data.preprocess import PreprocessSpec
    from ..inference.scoring import forward, probabilities
    from ..models import get_entry
    from ..train import OptimConfig, StepConfig, create_state, make_optimizer, make_train_step

    entry = get_entry(model_name)
    channels = channels or entry.channels
    num_classes = num_classes or (10 if model_name == "lenet5" else 2)
    binary = num_classes == 2
    spec = PreprocessSpec(size, size, channels, normalize=entry.normalize)
    tx, _ = make_optimizer(OptimConfig(lr=lr or (1e-3 if model_name == "lenet5" else 1e-4)), 100, 1)
    model, state = create_state(model_name, 1 if binary else num_classes, {**(options or {}), "dtype": dtype},
                                spec.shape, tx, 0)
    rng = np.random.default_rng(0)
    data = jax.device_put({"image": rng.integers(0, 256, (batch, *spec.shape), dtype=np.uint8),
                           "label": rng.integers(0, num_classes, batch).astype(np.int32),
                           "mask": np.ones(batch, bool)})
    if mode == "train":
        step = make_train_step(model, tx, StepConfig(spec, num_classes, binary))

        def run(s):
            s, metrics = step(s, data)
            return s, metrics["loss_sum"]

        def hlo(s):
            return step.lower(s, data).compile().as_text()
    else:
        apply = runtime.jit(lambda v, x: probabilities(forward(model, spec)(v, x), binary))

        def run(s):
            return s, apply(s.variables, data["image"])

        def hlo(s):
            return apply.lower(s.variables, data["image"]).compile().as_text()
    return StepRunner(run, state, model, spec, hlo)


def bench_step(mode: str, model_name: str, batch: int, size: int, channels: int | None = None,
               dtype: str = "float32", steps: int = 20, warmup: int = 3, num_classes: int | None = None,
               lr: float | None = None, options: dict | None = None) -> dict[str, Any]:
    """Time `steps` train or predict steps on one synthetic batch already on the device."""
    run, state, model, spec, _ = step_runner(mode, model_name, batch, size, channels, dtype, num_classes, lr,
                                             options)
    t0 = time.perf_counter()
    state, out = run(state)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        state, out = run(state)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, out = run(state)
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - t0
    flops = forward_flops_per_image(model, state.variables, spec.shape)
    images_per_s = batch * steps / elapsed
    work = flops * (3 if mode == "train" else 1) if flops else None  # fwd + bwd ≈ 3× fwd
    return {
        "model": model_name, "mode": mode, "batch": batch, "size": size, "dtype": dtype, "device": device_name(),
        "images_per_s": round(images_per_s, 2), "ms_per_step": round(elapsed / steps * 1e3, 3),
        "compile_s": round(compile_s, 2),
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "forward_flops_per_image": flops,
        "achieved_gflops": round(work * images_per_s / 1e9, 1) if work else None,
    }


def bench_profile(mode: str, model_name: str, batch: int, size: int, channels: int | None = None,
                  dtype: str = "float32", steps: int = 3, top: int = 10, options: dict | None = None) -> dict[str, Any]:
    """The `top` most expensive XLA operations of a train or predict step, with their share of the step."""
    from ..runtime import cpu
    from ..runtime.profile import profile_ops, time_convolutions

    run, state, _, _, hlo = step_runner(mode, model_name, batch, size, channels, dtype, options=options)
    for _ in range(2):  # compile and warm
        state, out = run(state)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    state, out = run(state)
    jax.block_until_ready(out)
    wall_ms = (time.perf_counter() - t0) * 1e3
    text = hlo(state)
    conv_ms = time_convolutions(text, compiler_options=cpu.compiler_options()) if jax.default_backend() == "cpu" \
        else None
    table, kinds, op_ms, _ = profile_ops(run, state, text, steps, top, conv_ms)
    return {"model": model_name, "mode": mode, "batch": batch, "size": size, "dtype": dtype,
            "step_ms_untraced": round(wall_ms, 1), "op_ms_per_step": round(op_ms, 1),
            "convolutions_ms": round(sum((conv_ms or {}).values()), 1),
            "kernels_ms": round(sum(t.ms_per_step for t in kinds if t.name.startswith("jaxnets_")), 1),
            "top": [{"op": t.name, "ms": round(t.ms_per_step, 2), "share": round(t.share, 4), "what": t.what}
                    for t in table],
            "kinds": [{"op": t.name, "ms": round(t.ms_per_step, 2), "share": round(t.share, 4), "what": t.what}
                      for t in kinds[:top]]}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, " \
           f"jax {jax.__version__}"
