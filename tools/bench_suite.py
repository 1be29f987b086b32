"""Maintainer tool behind `make bench`: the standard benchmark set, side by side with the eager-PyTorch peer
when one is given, written into a Markdown file (the figures, the commands that made them, the machine).

    python tools/bench_suite.py --out BENCHMARKS.md [--peer PATH/torch_peer.py --torch-python PATH/python]

Every path is an argument (the Makefile passes the project's own); without a peer the PyTorch column
stays empty. Only the block between the standard-set markers of --out is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from jaxnets.bench import bench_step, enable_compilation_cache, machine

# (our model, peer model, mode, batch, size, channels, options, steps)
STANDARD_SET = [
    ("logistic_regression", "logreg", "train", 32, 64, 3, None, 200),
    ("logistic_regression", "logreg", "predict", 32, 64, 3, None, 200),
    ("shallow_mlp", "shallow", "train", 32, 128, 3, None, 100),
    ("shallow_mlp", "shallow", "predict", 32, 128, 3, None, 100),
    ("mlp", "deep_mlp", "train", 32, 64, 3, {"hidden_sizes": (256, 64)}, 50),
    ("mlp", "deep_mlp", "predict", 32, 64, 3, {"hidden_sizes": (256, 64)}, 50),
    ("lenet5", "lenet5", "train", 64, 32, 1, None, 50),
    ("lenet5", "lenet5", "predict", 64, 32, 1, None, 50),
    ("lenet5", "lenet5", "train", 256, 32, 1, None, 20),
    ("lenet5", "lenet5", "predict", 256, 32, 1, None, 20),
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


def command(model, mode, batch, size, channels, options, steps) -> str:
    hidden = f" --hidden-sizes {','.join(map(str, options['hidden_sizes']))}" if options else ""
    return (f"jaxnets bench {mode} --model {model} --batch {batch} --size {size} --channels {channels}"
            f"{hidden} --steps {steps} --json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Markdown file whose standard-set block is (re)written")
    parser.add_argument("--peer", default=None, help="the eager-PyTorch peer script (torch_peer.py)")
    parser.add_argument("--torch-python", default=None, help="the interpreter that has torch, for --peer")
    args = parser.parse_args(argv)
    enable_compilation_cache()
    rows = []
    for model, peer_model, mode, batch, size, channels, options, steps in STANDARD_SET:
        ours = bench_step(mode, model, batch, size, channels, steps=steps, warmup=2, options=options)
        theirs = peer(args.torch_python, args.peer, peer_model, mode, batch, size, max(2, steps // 2))
        ratio = ours["images_per_s"] / theirs["images_per_s"] if theirs else None
        rows.append((ours, theirs, ratio, command(model, mode, batch, size, channels, options, steps)))
        print(json.dumps({**ours, "torch_images_per_s": theirs and theirs["images_per_s"],
                          "ratio": ratio and round(ratio, 2)}), flush=True)
    lines = [
        "| model | mode | batch | size | jaxnets img/s | PyTorch img/s | ratio | ms/step | compile s | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ours, theirs, ratio, _ in rows:
        peer_cell = f"{theirs['images_per_s']:,.1f}" if theirs else "–"
        ratio_cell = f"**{ratio:.2f}×**" if ratio else "–"
        lines.append(f"| {ours['model']} | {ours['mode']} | {ours['batch']} | {ours['size']} | "
                     f"{ours['images_per_s']:,.1f} | {peer_cell} | {ratio_cell} | {ours['ms_per_step']} | "
                     f"{ours['compile_s']} | {ours['achieved_gflops']} |")
    table = "\n".join(lines)
    commands = "\n".join(f"    {c}" for *_, c in rows)
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    start, end = "<!-- standard-set:start -->", "<!-- standard-set:end -->"
    block = (f"{start}\nMachine: {machine()}. Regenerate with `make bench`.\n\n{table}\n\nCommands (one JSON line "
             f"each; the peer ran `torch_peer.py` with the same model, mode, batch and size):\n\n{commands}\n{end}")
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = f"{text}\n{block}\n"
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
