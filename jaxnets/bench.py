"""`jaxnets bench`: throughput of the train/predict steps, the data pipeline, whole epochs and the service.

Synthetic step timings use one batch already on the device and block on the result, like the PyTorch peer
(the maintainers' `torch_peer.py`, run beside it by tools/bench_suite.py), so the two are comparable line by
line. One JSON line per run with --json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections import deque
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
    from . import runtime
    from .data.preprocess import PreprocessSpec
    from .inference.scoring import forward, probabilities
    from .models import get_entry
    from .train import OptimConfig, StepConfig, create_state, make_optimizer, make_train_step

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
    from .runtime import cpu
    from .runtime.profile import profile_ops, time_convolutions

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


def bench_data(data: str, size: int, batch: int, channels: int = 3, epochs: int = 3) -> dict[str, Any]:
    """First epoch (decode + resize + to device) and cached epochs (batches ready on the device)."""
    from .data import Loader, PreprocessSpec, load_dataset

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
    from . import runtime
    from .data.augment import get_augment
    from .data.mix import MixSpec
    from .data.preprocess import PreprocessSpec
    from .train.steps import StepConfig, step_inputs

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

    from .train import OptimConfig, TrainConfig, fit

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


def bench_serve(url: str, concurrency: int, requests_n: int, image: str, batch: int = 0,
                warmup: int = 200) -> dict[str, Any]:
    """Requests/s and latency percentiles against a running service (single-image requests, or batches).

    `concurrency` clients, each on its own keep-alive connection, send the next request as soon as the last one
    is answered (as wrk or hey do), from one asyncio loop: a client written with threads measures its own GIL
    waits into the latencies. `warmup` requests go first and are not counted, so that the figures are the
    server's steady state (its batching has learnt the model's timing, every code path has run once).
    Requests/s counts answered (200) requests and the percentiles are of their latencies; `errors` counts the
    others and `first_error` says why the first one failed."""
    import asyncio
    import gc

    import aiohttp  # a BentoML dependency

    with open(image, "rb") as f:
        payload = f.read()
    route = "/predict_batch" if batch else "/predict"

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        for _ in range(max(batch, 1)):
            data.add_field("images" if batch else "image", payload, filename="i.png",
                           content_type="application/octet-stream")
        return data

    async def load(count: int) -> tuple[list[tuple[float, str | None]], float]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as s:
            todo, results = iter(range(count)), []

            async def client() -> None:
                for _ in todo:
                    t0 = time.perf_counter()
                    try:
                        async with s.post(f"{url}{route}", data=form()) as r:
                            body = await r.read()
                            error = (None if r.status == 200
                                     else f"HTTP {r.status}: {body[:200].decode(errors='replace')}")
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                        error = f"{type(e).__name__}: {e}"
                    results.append((time.perf_counter() - t0, error))

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return results, time.perf_counter() - t0

    if warmup:
        asyncio.run(load(warmup))
    gc.collect()
    gc.disable()  # the client's own collection pauses would be measured as the server's latency
    try:
        results, wall = asyncio.run(load(requests_n))
    finally:
        gc.enable()
    errors = [e for _, e in results if e]
    latencies = sorted(t for t, e in results if not e) or [float("nan")]  # answered requests only
    answered = requests_n - len(errors)
    return {"route": route, "concurrency": concurrency, "requests": requests_n, "batch": batch, "warmup": warmup,
            "requests_per_s": round(answered / wall, 1),
            "images_per_s": round(answered * max(batch, 1) / wall, 1),
            "p50_ms": round(1e3 * latencies[len(latencies) // 2], 1),
            "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "max_ms": round(1e3 * latencies[-1], 1),
            "errors": len(errors), **({"first_error": errors[0]} if errors else {})}


# ------------------------------------------------------------------------------------------------------ CLI

def add_parser(sub) -> None:
    from .options import nonnegative_int, positive_int

    p = sub.add_parser("bench", help="measure train/predict steps, data, epochs, or the service")
    modes = p.add_subparsers(dest="bench_mode", required=True)
    for mode in ("train", "predict"):
        m = modes.add_parser(mode, help=f"{mode} steps on one synthetic batch already on the device")
        _step_arguments(m)
        m.add_argument("--steps", type=positive_int, default=20)
        m.add_argument("--warmup", type=int, default=3)
        m.add_argument("--hidden-sizes", default=None, help="for mlp, e.g. 256,64")
        m.add_argument("--json", action="store_true")
        m.set_defaults(func=_cli_step, mode=mode)
    r = modes.add_parser("profile", help="the most expensive XLA operations of a train or predict step")
    _step_arguments(r)
    r.add_argument("--mode", choices=("train", "predict"), default="train")
    r.add_argument("--steps", type=positive_int, default=3)
    r.add_argument("--top", type=positive_int, default=10)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cli_profile)
    d = modes.add_parser("data", help="first-epoch decode and cached-epoch throughput of a dataset")
    d.add_argument("--data", required=True)
    d.add_argument("--size", type=positive_int, default=128)
    d.add_argument("--channels", type=int, choices=(1, 3), default=3)
    d.add_argument("--batch", type=positive_int, default=64)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=lambda a: _emit(bench_data(a.data, a.size, a.batch, a.channels), a.json))
    a = modes.add_parser("augment", help="the train step's on-device input pipeline alone")
    a.add_argument("--augment", choices=("none", "flip", "light", "classic", "trivial"), default="trivial")
    a.add_argument("--mixup", type=float, default=0.2)
    a.add_argument("--cutmix", type=float, default=1.0)
    a.add_argument("--erase", type=float, default=0.25)
    a.add_argument("--size", type=positive_int, default=128)
    a.add_argument("--channels", type=int, choices=(1, 3), default=3)
    a.add_argument("--batch", type=positive_int, default=64)
    a.add_argument("--steps", type=positive_int, default=10)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=lambda a: _emit(bench_augment(a.augment, a.mixup, a.cutmix, a.erase, a.size, a.batch,
                                                      a.channels, a.steps), a.json))
    e = modes.add_parser("epoch", help="whole training epochs on real data, input pipeline included")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--size", type=positive_int, default=None)
    e.add_argument("--channels", type=int, choices=(1, 3), default=None)
    e.add_argument("--resize", default="stretch")
    e.add_argument("--batch", type=positive_int, default=64)
    e.add_argument("--epochs", type=positive_int, default=2)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=lambda a: _emit(bench_epoch(a.model, a.data, a.size, a.batch, a.epochs, a.resize,
                                                    a.channels, a.lr, dtype=a.dtype), a.json))
    s = modes.add_parser("serve", help="requests/s and latency against a running service")
    s.add_argument("--url", default="http://127.0.0.1:3000")
    s.add_argument("--concurrency", type=positive_int, default=16)
    s.add_argument("--requests", type=positive_int, default=200)
    s.add_argument("--batch", type=int, default=0, help="images per request on /predict_batch (0: /predict)")
    s.add_argument("--image", required=True)
    s.add_argument("--warmup", type=nonnegative_int, default=200, help="requests sent first and not counted")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=lambda a: _emit(bench_serve(a.url, a.concurrency, a.requests, a.image, a.batch, a.warmup),
                                        a.json))


def _step_arguments(parser: Any) -> None:
    """The options that say which step on which synthetic batch: shared by `bench train/predict` and `profile`."""
    from .options import positive_int

    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--size", type=positive_int, default=None)
    parser.add_argument("--channels", choices=(1, 3), type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))


def _cli_step(args) -> int:
    from .models import get_entry

    enable_compilation_cache()
    options = {"hidden_sizes": [int(x) for x in args.hidden_sizes.split(",")]} if args.hidden_sizes else None
    size = args.size or get_entry(args.model).size
    _emit(bench_step(args.mode, args.model, args.batch, size, args.channels, args.dtype, args.steps, args.warmup,
                     options=options), args.json)
    return 0


def _cli_profile(args: Any) -> int:
    from .models import get_entry

    result = bench_profile(args.mode, args.model, args.batch, args.size or get_entry(args.model).size,
                           args.channels, args.dtype, args.steps, args.top)
    if args.json:
        return _emit(result, True)
    print(f"{args.model} {args.mode}, batch {args.batch}: {result['step_ms_untraced']} ms per step untraced, "
          f"{result['op_ms_per_step']} ms of operations (one thread each), of which XLA's convolutions "
          f"{result['convolutions_ms']} ms (timed one by one) and jaxnets' kernels {result['kernels_ms']} ms")
    for title, rows in (("operations", result["top"]), ("kinds of operation", result["kinds"])):
        print(f"top {len(rows)} {title}:")
        for row in rows:
            print(f"{100 * row['share']:5.1f} %  {row['ms']:9.2f} ms  {row['op']:<28} {row['what'][:140]}")
    return 0


def _emit(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")
    return 0


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, " \
           f"jax {jax.__version__}"
