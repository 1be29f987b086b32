"""`jaxnets bench`: its sub-commands and their options, and the result printed as lines or one JSON line."""

from __future__ import annotations

import json
from typing import Any

from .pipeline import bench_augment, bench_data, bench_epoch
from .serve import bench_serve
from .steps import bench_profile, bench_step, enable_compilation_cache

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    from ..options import nonnegative_int, positive_int

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
    from ..options import positive_int

    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--size", type=positive_int, default=None)
    parser.add_argument("--channels", choices=(1, 3), type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))


def _cli_step(args) -> int:
    from ..models import get_entry

    enable_compilation_cache()
    options = {"hidden_sizes": [int(x) for x in args.hidden_sizes.split(",")]} if args.hidden_sizes else None
    size = args.size or get_entry(args.model).size
    _emit(bench_step(args.mode, args.model, args.batch, size, args.channels, args.dtype, args.steps, args.warmup,
                     options=options), args.json)
    return 0


def _cli_profile(args: Any) -> int:
    from ..models import get_entry

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
