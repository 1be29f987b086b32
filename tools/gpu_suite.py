"""Maintainer tool: the GPU rows of BENCHMARKS.md in one short run on a lent GPU machine.

GPU time comes in leases of minutes, so one script measures everything in priority order, within a budget of
seconds, each row on its own (a failing row prints its error and the rest go on), one JSON line per row to
stdout and to `--out`:

    python tools/gpu_suite.py jax   --out DIR --data PHOTOS --budget 360   # jaxnets: ceilings, rows, epoch
    python tools/gpu_suite.py torch --out DIR --peer torch_peer.py --budget 120   # the eager-PyTorch peer
    python tools/gpu_suite.py table DIR/jax.jsonl DIR/torch.jsonl          # the Markdown table (anywhere)

The jax part imports no torch and the torch part no jax, so each runs in its own process and the two never
share the card's memory. The peer is the maintainers' torch_peer.py, its models moved to the GPU, timed with a
device synchronisation around the loop, in float32 and under bfloat16 autocast; ResNet-50 from torchvision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

SIZE = 224
BATCH = 128
# (jaxnets model, peer model, options, size, batch): the standard set at 224 px (LeNet-5 at its own 32)
MODELS = [
    ("resnet18", "resnet18", None, SIZE, BATCH),
    ("vgg16", "vgg16", None, SIZE, BATCH),
    ("alexnet", "alexnet", None, SIZE, BATCH),
    ("mlp", "deep_mlp", {"hidden_sizes": (256, 64)}, SIZE, BATCH),
    ("shallow_mlp", "shallow", None, SIZE, BATCH),
    ("logistic_regression", "logreg", None, SIZE, BATCH),
    ("lenet5", "lenet5", None, 32, 256),
]
RESNET50_BATCH = 256
DEVICE = "cuda"
CEILING_N = 8192  # the matrix product of the ceilings: N×N×N


class Budget:
    """Seconds left for the part; rows past it are skipped (said so), never cut in the middle."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def emit(out: Path, row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    with out.open("a") as f:
        f.write(line + "\n")


def attempt(out: Path, budget: Budget, name: str, fun, need_s: float = 5.0) -> None:
    """Run one row; its JSON or its error goes to `out`."""
    if budget.left() < need_s:
        emit(out, {"row": name, "skipped": f"budget: {budget.left():.0f} s left"})
        return
    t0 = time.monotonic()
    try:
        emit(out, {"row": name, **fun(), "row_wall_s": round(time.monotonic() - t0, 1)})
    except Exception as e:  # one broken row must not cost the lease's other rows
        traceback.print_exc()
        emit(out, {"row": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})


# ------------------------------------------------------------------------------------------------------ jax

def jax_ceilings() -> dict:
    """The card's measured ceilings: a large matrix product in bfloat16 and float32 (default and highest
    precision), and a device-to-device copy counting bytes read and written."""
    import jax
    import jax.numpy as jnp

    def timed(fun, *args, reps=10):
        jax.block_until_ready(fun(*args))
        jax.block_until_ready(fun(*args))
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fun(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / reps

    n = CEILING_N
    key = jax.random.key(0)
    row = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
    for dtype, precision in (("bfloat16", None), ("float32", None), ("float32", "highest")):
        a = jax.random.normal(key, (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        mm = jax.jit(lambda a, b, p=precision: jnp.dot(a, b, precision=p))
        row[f"matmul_{dtype}_{precision or 'default'}_tflops"] = round(2 * n ** 3 / timed(mm, a, b) / 1e12, 1)
    x = jax.random.normal(key, (CEILING_N // 16, 1024, 1024), jnp.float32)  # 2 GiB on the GPU
    s = timed(jax.jit(lambda x: x * 1.0001), x)
    row["copy_tb_per_s"] = round(2 * x.nbytes / s / 1e12, 2)
    return row


def jax_part(args) -> int:
    import jax

    from jaxnets.bench import bench_epoch, bench_step

    out, budget = Path(args.out) / "jax.jsonl", Budget(args.budget)
    import flax
    emit(out, {"row": "env", "jax": jax.__version__, "flax": flax.__version__, "backend": jax.default_backend(),
               "devices": [getattr(d, "device_kind", str(d)) for d in jax.devices()]})
    # a small step first: if jaxnets cannot run here at all, say so in seconds
    attempt(out, budget, "smoke", lambda: bench_step("train", "lenet5", 64, 32, steps=5, warmup=2))
    attempt(out, budget, "ceilings", jax_ceilings)
    attempt(out, budget, "resnet50 train bfloat16",
            lambda: bench_step("train", "resnet50", RESNET50_BATCH, SIZE, dtype="bfloat16", steps=20, warmup=3),
            need_s=40)
    for dtype in ("bfloat16", "float32"):
        for model, _, options, size, batch in MODELS:
            for mode in ("train", "predict"):
                attempt(out, budget, f"{model} {mode} {dtype}",
                        lambda model=model, mode=mode, size=size, batch=batch, options=options, dtype=dtype:
                        bench_step(mode, model, batch, size, dtype=dtype, steps=30, warmup=3, options=options),
                        need_s=25)
        if dtype == "bfloat16" and args.data:
            attempt(out, budget, "epoch resnet18 bfloat16",
                    lambda: bench_epoch("resnet18", args.data, SIZE, 64, 3, dtype="bfloat16"), need_s=60)
    attempt(out, budget, "resnet50 predict bfloat16",
            lambda: bench_step("predict", "resnet50", RESNET50_BATCH, SIZE, dtype="bfloat16", steps=20, warmup=3),
            need_s=30)
    if args.data:
        attempt(out, budget, "epoch resnet18 float32",
                lambda: bench_epoch("resnet18", args.data, SIZE, 64, 3),
                need_s=60)
    attempt(out, budget, "resnet50 train float32",
            lambda: bench_step("train", "resnet50", RESNET50_BATCH, SIZE, steps=20, warmup=3), need_s=40)
    return 0


# ---------------------------------------------------------------------------------------------------- torch

def torch_step(torch, model, x, y, criterion, mode: str, dtype: str, steps: int) -> float:
    """Seconds per step of the peer's train or predict step on the GPU, synchronised around the loop."""
    autocast = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    if mode == "train":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = criterion(model(x).float(), y)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(x)
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def torch_part(args) -> int:
    import importlib.util

    import torch

    out, budget = Path(args.out) / "torch.jsonl", Budget(args.budget)
    spec = importlib.util.spec_from_file_location("torch_peer", args.peer)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    emit(out, {"row": "env", "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
               "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32})

    def row(name, model, in_ch, size, batch, num_classes, mode, dtype):
        model = model.to(DEVICE).to(memory_format=torch.channels_last)
        x = torch.randn(batch, in_ch, size, size, device=DEVICE).to(memory_format=torch.channels_last)
        if num_classes == 1:
            y, criterion = torch.randint(0, 2, (batch, 1), device=DEVICE).float(), torch.nn.BCEWithLogitsLoss()
        else:
            y, criterion = torch.randint(0, num_classes, (batch,), device=DEVICE), torch.nn.CrossEntropyLoss()
        s = torch_step(torch, model, x, y, criterion, mode, dtype, 30)
        return {"model": name, "mode": mode, "dtype": dtype, "batch": batch, "size": size,
                "images_per_s": round(batch / s, 1), "ms_per_step": round(s * 1e3, 3)}

    def resnet50():
        import torchvision

        return torchvision.models.resnet50(num_classes=1)

    attempt(out, budget, "torch resnet50 train bfloat16",
            lambda: row("resnet50", resnet50(), 3, SIZE, RESNET50_BATCH, 1, "train", "bfloat16"))
    for dtype in ("bfloat16", "float32"):
        for _, name, _, size, batch in MODELS:
            ctor, in_ch, _, num_classes, _ = peer.MODELS[name]
            for mode in ("train", "predict"):
                attempt(out, budget, f"torch {name} {mode} {dtype}",
                        lambda ctor=ctor, name=name, in_ch=in_ch, size=size, batch=batch, nc=num_classes, mode=mode,
                        dtype=dtype: row(name, ctor(size), in_ch, size, batch, nc, mode, dtype))
    return 0


# ---------------------------------------------------------------------------------------------------- table

def forward_flops(model_name: str, size: int, options: dict | None) -> float | None:
    """Forward FLOPs of one image, counted here from the lowered module (jaxnets.bench.forward_flops_per_image):
    rows measured before the bench counted them that way carry a GPU's compiled count, which misses cuDNN."""
    import jax
    import jax.numpy as jnp

    from jaxnets.bench import forward_flops_per_image
    from jaxnets.models import create_model, get_entry

    channels = get_entry(model_name).channels
    model = create_model(model_name, 10 if model_name == "lenet5" else 1, **(options or {}))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)),
                                                  train=False))
    return forward_flops_per_image(model, variables, (size, size, channels))


def table_part(args) -> int:
    """The GPU rows of BENCHMARKS.md from the two parts' JSON lines (TFLOP/s: 3× the forward for a train step)."""
    rows = [json.loads(line) for path in args.files for line in Path(path).read_text().splitlines() if line]
    peer = {(r["model"], r["mode"], r["dtype"]): r for r in rows if r["row"].startswith("torch ") and "model" in r}
    names = {m: p for m, p, *_ in MODELS} | {"resnet50": "resnet50"}
    options = {m: o for m, _, o, *_ in MODELS}
    print("| model | mode | dtype | batch | size | jaxnets img/s | PyTorch img/s | ratio | ms/step | compile s "
          "| TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    latest = {}  # a row measured twice (a rerun for rows a budget skipped): the later one
    for r in rows:
        if not (r["row"].startswith("torch ") or r["row"] == "smoke" or "images_per_s" not in r or "mode" not in r
                or "seconds_per_epoch" in r):
            latest[r["row"]] = r
    for r in latest.values():
        theirs = peer.get((names.get(r["model"], r["model"]), r["mode"], r["dtype"]))
        ratio = f"**{r['images_per_s'] / theirs['images_per_s']:.2f}×**" if theirs else "–"
        flops = forward_flops(r["model"], r["size"], options.get(r["model"]))
        tflops = f"{flops * (3 if r['mode'] == 'train' else 1) * r['images_per_s'] / 1e12:.1f}" if flops else "–"
        their_cell = f"{theirs['images_per_s']:,.0f}" if theirs else "–"
        print(f"| {r['model']} | {r['mode']} | {r['dtype']} | {r['batch']} | {r['size']} | {r['images_per_s']:,.0f} "
              f"| {their_cell} | {ratio} | {r['ms_per_step']} | {r['compile_s']} | {tflops} |")
    measured = {r["row"] for r in rows if "skipped" not in r and "error" not in r}
    for r in rows:  # a skipped or failed row that a later call measured is not news
        if ("seconds_per_epoch" in r or r["row"] in ("ceilings", "env")
                or (("error" in r or "skipped" in r) and r["row"] not in measured)):
            print(json.dumps(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    j = parts.add_parser("jax")
    j.add_argument("--out", required=True)
    j.add_argument("--data", default=None, help="a folder of class folders for the whole-epoch rows")
    j.add_argument("--budget", type=float, default=360)
    t = parts.add_parser("torch")
    t.add_argument("--out", required=True)
    t.add_argument("--peer", required=True)
    t.add_argument("--budget", type=float, default=120)
    b = parts.add_parser("table")
    b.add_argument("files", nargs="+")
    for part in (j, t):
        part.add_argument("--small", action="store_true", help="a dry run of the script at toy sizes (any machine)")
    args = parser.parse_args(argv)
    if getattr(args, "small", False):
        global SIZE, RESNET50_BATCH, DEVICE, CEILING_N
        SIZE, RESNET50_BATCH, DEVICE, CEILING_N = 32, 2, "cpu", 256
        MODELS[:] = [(m, p, o, 32, 4) for m, p, o, _, _ in MODELS]
    if args.part != "table":
        Path(args.out).mkdir(parents=True, exist_ok=True)
    return {"jax": jax_part, "torch": torch_part, "table": table_part}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
