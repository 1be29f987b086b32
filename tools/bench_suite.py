"""Maintainer tool behind `make bench`: the standard benchmark set, side by side with the eager-PyTorch peer
when one is given, written into a Markdown file (the figures, the commands that made them, the machine).

    python tools/bench_suite.py --out BENCHMARKS.md [--peer PATH/torch_peer.py --torch-python PATH/python]

Every path is an argument (the Makefile passes the project's own); without a peer the PyTorch column
stays empty. Only the block between the standard-set markers of --out is replaced.

Each row is measured in `--rounds` rounds (default 3), jaxnets then the peer, alternating, with the same number
of steps: on the shared 2-core machines one short run of either side can be 2× off (the peer's LeNet-5 step gave
7.0k, 14.5k and 11.7k images/s in three runs in a row), so the table gives each side's median and the range of
the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from jaxnets.bench import bench_step, enable_compilation_cache, machine

# (our model, peer model, mode, batch, size, channels, options, steps): enough steps that each side's
# measurement of a sub-millisecond step lasts a few tenths of a second (with 100 steps of a 0.2 ms step, 20 ms of
# measurement, anything else on a 2-core machine moved a row by 2×)
STANDARD_SET = [
    ("logistic_regression", "logreg", "train", 32, 64, 3, None, 2000),
    ("logistic_regression", "logreg", "predict", 32, 64, 3, None, 5000),
    ("shallow_mlp", "shallow", "train", 32, 128, 3, None, 500),
    ("shallow_mlp", "shallow", "predict", 32, 128, 3, None, 2000),
    ("mlp", "deep_mlp", "train", 32, 64, 3, {"hidden_sizes": (256, 64)}, 100),
    ("mlp", "deep_mlp", "predict", 32, 64, 3, {"hidden_sizes": (256, 64)}, 300),
    ("lenet5", "lenet5", "train", 64, 32, 1, None, 200),
    ("lenet5", "lenet5", "predict", 64, 32, 1, None, 500),
    ("lenet5", "lenet5", "train", 256, 32, 1, None, 50),
    ("lenet5", "lenet5", "predict", 256, 32, 1, None, 200),
    ("alexnet", "alexnet", "train", 32, 128, 3, None, 5),
    ("alexnet", "alexnet", "predict", 32, 128, 3, None, 10),
    ("vgg16", "vgg16", "train", 32, 128, 3, None, 2),
    ("vgg16", "vgg16", "predict", 32, 128, 3, None, 3),
    ("resnet18", "resnet18", "train", 32, 128, 3, None, 5),
    ("resnet18", "resnet18", "predict", 32, 128, 3, None, 10),
    ("resnet18", "resnet18", "train", 32, 224, 3, None, 3),
]


def peer(python: str | None, script: str | None, model: str, mode: str, batch: int, size: int,
         steps: int) -> dict | None:
    """The peer's JSON line for one row, or None when no peer was given or it failed."""
    if not (python and script and Path(python).exists() and Path(script).exists()):
        return None
    out = subprocess.run([python, str(script), "--model", model, "--mode", mode, "--batch", str(batch), "--size",
                          str(size), "--steps", str(steps), "--warmup", "2", "--threads", str(os.cpu_count() or 2)],
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None


def summary(ours: list[dict], theirs: list[dict | None]) -> dict:
    """One table row: each side's median images/s over the rounds (the lower middle of an even count, on both
    sides), their ratio, the ratio of each round whose peer ran, and the first round's compile time (later rounds
    may load the compilation from the cache)."""
    def lower_middle(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    ran = [t["images_per_s"] for t in theirs if t]
    ours_median = lower_middle([o["images_per_s"] for o in ours])
    middle = next(o for o in ours if o["images_per_s"] == ours_median)
    peer_median = lower_middle(ran) if ran else None
    return {**middle, "compile_s": ours[0]["compile_s"], "rounds": len(ours), "torch_images_per_s": peer_median,
            "ratio": peer_median and round(ours_median / peer_median, 3),
            "ratios": [round(o["images_per_s"] / t["images_per_s"], 3) for o, t in zip(ours, theirs, strict=True)
                       if t]}


def command(model, mode, batch, size, channels, options, steps) -> str:
    hidden = f" --hidden-sizes {','.join(map(str, options['hidden_sizes']))}" if options else ""
    return (f"jaxnets bench {mode} --model {model} --batch {batch} --size {size} --channels {channels}"
            f"{hidden} --steps {steps} --json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Markdown file whose standard-set block is (re)written")
    parser.add_argument("--peer", default=None, help="the eager-PyTorch peer script (torch_peer.py)")
    parser.add_argument("--torch-python", default=None, help="the interpreter that has torch, for --peer")
    parser.add_argument("--rounds", type=int, default=3, help="alternating jaxnets/peer measurements per row")
    args = parser.parse_args(argv)
    args.rounds = max(1, args.rounds)
    enable_compilation_cache()
    rows = []
    for model, peer_model, mode, batch, size, channels, options, steps in STANDARD_SET:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(bench_step(mode, model, batch, size, channels, steps=steps, warmup=2, options=options))
            theirs.append(peer(args.torch_python, args.peer, peer_model, mode, batch, size, steps))
        row = summary(ours, theirs)
        rows.append((row, command(model, mode, batch, size, channels, options, steps)))
        print(json.dumps(row), flush=True)
    lines = [
        "| model | mode | batch | size | jaxnets img/s | PyTorch img/s | ratio | ratio per round | ms/step "
        "| compile s | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, _ in rows:
        peer_cell = f"{row['torch_images_per_s']:,.1f}" if row["torch_images_per_s"] else "–"
        ratio_cell = f"**{row['ratio']:.2f}×**" if row["ratio"] else "–"
        spread = f"{min(row['ratios']):.2f}–{max(row['ratios']):.2f}" if row["ratios"] else "–"
        lines.append(f"| {row['model']} | {row['mode']} | {row['batch']} | {row['size']} | "
                     f"{row['images_per_s']:,.1f} | {peer_cell} | {ratio_cell} | {spread} | {row['ms_per_step']} | "
                     f"{row['compile_s']} | {row['achieved_gflops']} |")
    table = "\n".join(lines)
    commands = "\n".join(f"    {c}" for *_, c in rows)
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    start, end = "<!-- standard-set:start -->", "<!-- standard-set:end -->"
    block = (f"{start}\nMachine: {machine()}. Regenerate with `make bench`: each side's median of {args.rounds} "
             "alternating rounds, the ratio of the medians, and the range of the per-round ratios.\n\n"
             f"{table}\n\nCommands (one JSON line each; the peer ran `torch_peer.py` with the same model, mode, "
             f"batch, size and steps):\n\n{commands}\n{end}")
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = f"{text}\n{block}\n"
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
