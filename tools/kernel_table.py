"""Maintainer tool (issue 33, point 3): what each CPU fast path of jaxnets/runtime/choice.py earns on whole train
and predict steps of the standard set, on this machine's CPU kind.

    python tools/kernel_table.py [--rounds 2] [--json out.json]

For every row and every path, the step is compiled with the path switched off (`JAXNETS_CPU_OFF=name`, exactly what
a user sets) and compared with the step with every path on (`JAXNETS_CPU_ON=all`: the paths this kind's table
switches off are measured too): where the compiled programs are the same, the path does not reach that step ("–").
Where they differ, both are timed, alternating, `--rounds` rounds, best of each; the gain is on/off - 1. A path
whose best gain over the standard set's rows (all but Lite0's) is under 5 % belongs in `choice.OFF_ON` for this
kind; one that reaches no row because another path takes its layers (stored_input_conv beside the wide kernels)
costs nothing and stays: the table is measured with the kernels running, and applies only there.
`ynn_dots` is a compiler option (the HLO text may not show it), so it is timed on every row.
"""

from __future__ import annotations

import argparse
import json
import os
import re

from jaxnets.bench.steps import bench_step, machine, step_runner
from jaxnets.runtime import choice

# (model, mode, batch, size, channels, options, steps): 14 of the standard set's 17 rows (tools/bench_suite.py) and
# Lite0's, VGG-16 at the issue's 64 px instead of 128 px, without LeNet-5 predict b256 and ResNet-18 train 224 px
# (the same layers as rows here), with steps enough for about a second of measurement
ROWS = [
    ("logistic_regression", "train", 32, 64, 3, None, 2000),
    ("logistic_regression", "predict", 32, 64, 3, None, 5000),
    ("shallow_mlp", "train", 32, 128, 3, None, 1000),
    ("shallow_mlp", "predict", 32, 128, 3, None, 4000),
    ("mlp", "train", 32, 64, 3, {"hidden_sizes": (256, 64)}, 150),
    ("mlp", "predict", 32, 64, 3, {"hidden_sizes": (256, 64)}, 500),
    ("lenet5", "train", 64, 32, 1, None, 400),
    ("lenet5", "predict", 64, 32, 1, None, 1000),
    ("lenet5", "train", 256, 32, 1, None, 100),
    ("alexnet", "train", 32, 128, 3, None, 4),
    ("alexnet", "predict", 32, 128, 3, None, 10),
    ("vgg16", "train", 32, 64, 3, None, 2),
    ("resnet18", "train", 32, 128, 3, None, 3),
    ("resnet18", "predict", 32, 128, 3, None, 8),
    ("efficientnet_lite0", "train", 32, 128, 3, None, 4),  # beyond the standard set: the depthwise kernel's row
]


def _with_off(name: str | None):
    """Every path on (`JAXNETS_CPU_ON=all`, whatever choice.OFF_ON says for this kind) but `name` (None: none
    off), for the next step built."""
    os.environ[choice.ON_ENV] = "all"
    for older in ("JAXNETS_CPU_KERNELS", "JAXNETS_CPU_DOTS"):  # the older switches would hide paths
        os.environ.pop(older, None)
    if name is None:
        os.environ.pop(choice.OFF_ENV, None)
    else:
        os.environ[choice.OFF_ENV] = name


def _program(row, off: str | None) -> str:
    """The compiled step's HLO text with `off` switched off, names of modules and ids removed."""
    model, mode, batch, size, channels, options, _ = row
    _with_off(off)
    runner = step_runner(mode, model, batch, size, channels, options=options)
    text = runner.hlo(runner.state)
    # the debug tables (file names, source locations, stack frames) differ with any change of the source
    text = re.sub(r"^(?:FileNames|FunctionNames|FileLocations|StackFrames)\n(?:.+\n)*", "", text, flags=re.M)
    return re.sub(r"HloModule \S+|, metadata=\{[^}]*\}|, stack_frame_id=\d+|\.\d+\b", "", text)


def _images_per_s(row, off: str | None) -> float:
    """One measurement of the whole step with `off` switched off: `jaxnets bench`'s own timing (compile, warm,
    then `steps` steps)."""
    model, mode, batch, size, channels, options, steps = row
    _with_off(off)
    return bench_step(mode, model, batch, size, channels, steps=steps, warmup=3, options=options)["images_per_s"]


def measure_row(row, rounds: int) -> list[dict]:
    """Every path's gain on one row ("reaches": False where the compiled step does not change)."""
    base = _program(row, None)
    reached = [p for p in choice.PATHS if p == "ynn_dots" or _program(row, p) != base]
    best = {p: 0.0 for p in [None, *reached]}
    for _ in range(rounds):
        for p in best:
            best[p] = max(best[p], _images_per_s(row, p))
    os.environ.pop(choice.ON_ENV, None)
    os.environ.pop(choice.OFF_ENV, None)
    name = f"{row[0]} {row[1]} b{row[2]} {row[3]}px"
    return [{"row": name, "path": p, "reaches": p in reached, "on": round(best[None], 1),
             "off": round(best[p], 1) if p in reached else None,
             "gain": round(best[None] / best[p] - 1, 4) if p in reached else None} for p in choice.PATHS]


def table(results: list[dict]) -> str:
    """The Markdown table: one line per row, one column per path, the gain in per cent where the path reaches."""
    rows = sorted({r["row"] for r in results}, key=[r["row"] for r in results].index)
    head = "| step | on img/s | " + " | ".join(f"`{p}`" for p in choice.PATHS) + " |"
    lines = [head, "|" + "---|" * (len(choice.PATHS) + 2)]
    for name in rows:
        cells = {r["path"]: r for r in results if r["row"] == name}
        on = next(iter(cells.values()))["on"]
        lines.append(f"| {name} | {on:,} | " + " | ".join(
            f"{c['gain'] * 100:+.0f} %" if c["reaches"] else "–" for c in cells.values()) + " |")
    verdict = []
    for p in choice.PATHS:
        gains = [r["gain"] for r in results if r["path"] == p and r["reaches"]]
        verdict.append(f"{max(gains) * 100:+.0f} %" if gains else "reaches none")
    lines.append("| **best gain** | | " + " | ".join(verdict) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--only", help="comma-separated model names (default: every row)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    results: list[dict] = []
    print(f"{machine()}, CPU kind {choice.cpu_kind()}", flush=True)
    for row in ROWS:
        if only and row[0] not in only:
            continue
        measured = measure_row(row, args.rounds)
        results += measured
        print(json.dumps([r for r in measured if r["reaches"]]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "kind": choice.cpu_kind(), "results": results}, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
