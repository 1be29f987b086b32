"""Where the small models' predict time goes (BENCHMARKS.md, "Why the small predict rows stay under 1.0×").

Times, per batch of 32 and in microseconds (best and median of 7 rounds of 2,000 calls): a jitted call that does
almost nothing (the dispatch floor), the first layer as jaxnets computes it from uint8 pixels (convert,
normalise, product), the same with the normalisation folded into the weights, the same as a fused
multiply-reduce, and the product alone from float32 input (what the PyTorch peer times).

    python tools/predict_anatomy.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import runtime


def timed(fun, *args, calls: int = 2000) -> tuple[float, float]:
    for _ in range(50):
        out = fun(*args)
    jax.block_until_ready(out)
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fun(*args)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return round(min(rounds), 1), round(sorted(rounds)[3], 1)


def main() -> None:
    rng = np.random.default_rng(0)
    mean, std = 0.5, 0.5  # the MLPs' "half" normalisation
    for name, size, width in (("logistic_regression", 64, 1), ("shallow_mlp", 128, 4)):
        features = size * size * 3
        pixels = jax.device_put(rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8))
        floats = jax.device_put(rng.standard_normal((32, features), np.float32))
        w = jnp.asarray(rng.standard_normal((features, width), np.float32) * 0.01)

        def as_now(w, x):
            return ((x.astype(jnp.float32) / 255 - mean) / std).reshape(32, -1) @ w

        def folded(w, x):
            return x.reshape(32, -1).astype(jnp.float32) @ (w / (255 * std)) - (mean / std) * w.sum(0)

        def multiply_reduce(w, x):
            scaled = w.T[None] / (255 * std)
            return jnp.sum(x.reshape(32, 1, -1).astype(jnp.float32) * scaled, axis=-1) - (mean / std) * w.sum(0)

        print(f"{name} ({size} px, {width} output(s)): µs per batch of 32 (best, median)")
        print(f"  {'dispatch floor':<22}", timed(runtime.jit(lambda x: x[:1, :1, :1, :1].astype(jnp.float32)), pixels))
        for label, fun in (("from uint8, as now", as_now), ("normalisation folded", folded),
                           ("fused multiply-reduce", multiply_reduce)):
            print(f"  {label:<22}", timed(runtime.jit(fun), w, pixels))
        print(f"  {'float32 input':<22}", timed(runtime.jit(lambda w, x: x @ w), w, floats))


if __name__ == "__main__":
    main()
