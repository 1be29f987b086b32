"""Where a jitted step spends its time, per XLA operation: `jaxnets bench profile`.

A few steps run under `jax.profiler.trace`; XLA:CPU records one event per executed HLO instruction (a fusion,
a convolution, a library call) on the threads that run them, named as in the compiled module. Summing those
events per instruction and reading the instruction's line in the compiled HLO (its kind, shapes, window and the
JAX operation it came from) gives a table of the most expensive operations and their share of the step:
what BENCHMARKS.md shows before anything is changed for speed.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
from jax.profiler import ProfileData

__all__ = ["OpTime", "describe_instructions", "profile_ops", "time_convolutions"]

# `%name = type opcode(operands), attributes` — the type of a tuple holds spaces, hence the lazy match
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_ATTRIBUTES = ("window", "dim_labels", "kind", "custom_call_target", "dimensions")


@dataclass(frozen=True)
class OpTime:
    name: str  # the HLO instruction
    ms_per_step: float
    share: float  # of the summed operation time of a step
    what: str  # opcode, result shape, window/labels, and the JAX operation it came from


def describe_instructions(hlo_text: str) -> dict[str, str]:
    """HLO instruction name → a one-line description, from a compiled module's text."""
    described = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        attributes = [f"{key}={value}" for key in _ATTRIBUTES
                      if (value := _attribute(rest, key)) is not None]
        origin = _attribute(rest, "op_name")
        origin = "/".join(origin.strip('"').split("/")[-3:]) if origin else ""
        described[name] = " ".join([opcode, re.sub(r"\{[^}]*\}", "", shape), *attributes, origin]).strip()
    return described


def _attribute(text: str, key: str) -> str | None:
    match = re.search(rf"\b{key}=(\"[^\"]*\"|\{{[^}}]*\}}|[^,\s]+)", text)
    return match.group(1) if match else None


def profile_ops(run: Callable[[Any], tuple[Any, Any]], state: Any, hlo_text: str, steps: int = 5,
                top: int = 10, conv_ms: dict[str, float] | None = None
                ) -> tuple[list[OpTime], list[OpTime], float, Any]:
    """Trace `steps` calls of `run` (already compiled and warm) and return the `top` operations by time, every
    kind of operation by time (instructions grouped by name without their number: `transpose_copy_fusion` ×58;
    a custom call by its target: `jaxnets_wide_conv_forward` ×33), the summed operation time of one step in ms,
    and the state after the steps. `conv_ms` (from `time_convolutions`) replaces the traced launch time of each
    convolution by its measured time."""
    totals: collections.Counter[str] = collections.Counter()
    names = describe_instructions(hlo_text)
    with tempfile.TemporaryDirectory(prefix="jaxnets-profile-") as directory:
        with jax.profiler.trace(directory):
            for _ in range(steps):
                state, out = run(state)
                jax.block_until_ready(out)
        for path in glob.glob(f"{directory}/**/*.xplane.pb", recursive=True):
            for plane in ProfileData.from_file(path).planes:
                for line in plane.lines:
                    if line.name.startswith("tf_XLA"):  # the threads that run the instructions
                        for event in line.events:
                            if event.name in names:
                                totals[event.name] += event.duration_ns
    for name, ms in (conv_ms or {}).items():
        totals[name] = ms * 1e6 * steps
    step_ns = sum(totals.values()) / steps
    if not step_ns:
        return [], [], 0.0, state
    table = [OpTime(name, ns / steps / 1e6, ns / steps / step_ns, names[name]) for name, ns in totals.most_common(top)]
    kinds: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for name, ns in totals.items():
        target = re.search(r'custom_call_target="([^"]+)"', names[name]) if name in names else None
        kind = target.group(1) if target else re.sub(r"\.\d+$", "", name)
        kinds[kind] += ns
        counts[kind] += 1
    grouped = [OpTime(kind, ns / steps / 1e6, ns / steps / step_ns, f"{counts[kind]} instructions")
               for kind, ns in kinds.most_common()]
    return table, grouped, step_ns / 1e6, state


def _shapes(hlo_text: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HLO instruction name → (element type, dimensions) of its (array) result."""
    shapes = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        array = match and re.fullmatch(r"(\w+)\[([\d,]*)\](?:\{[^}]*\})?", match.group(2))
        if array:
            shapes[match.group(1)] = (array.group(1), tuple(int(d) for d in array.group(2).split(",") if d))
    return shapes


def _window(text: str, key: str, default: list) -> list:
    match = re.search(rf"\b{key}=([-\d_x]+)", text)  # pads may be negative: pad=0_-1x0_-1
    return [tuple(int(v) for v in part.split("_")) if "_" in part else int(part)
            for part in match.group(1).split("x")] if match else default


def time_convolutions(hlo_text: str, repeats: int = 3,
                      compiler_options: dict | None = None) -> dict[str, float]:
    """Convolution instruction name → ms, each convolution of the module compiled and timed on its own.

    XLA:CPU hands convolutions to a library (YNNPACK) that finishes them asynchronously, so a trace shows
    only their launch: timing each one alone, with the step's compiler options, is what puts them in the
    table. A convolution whose attributes cannot be rebuilt exactly (its result shape differs) is left out."""
    import time

    import jax.numpy as jnp
    from jax import lax

    shapes, timed = _shapes(hlo_text), {}
    letters = {"b": "N", "f": "C", "i": "I", "o": "O", "0": "H", "1": "W", "2": "D"}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match or match.group(3) != "convolution" or match.group(1) not in shapes:
            continue
        name, rest = match.group(1), match.group(4)
        operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
        labels = _attribute(rest, "dim_labels")
        if len(operands) != 2 or not labels or any(o not in shapes for o in operands):
            continue
        lhs_spec, rhs_out = labels.split("_", 1)
        rhs_spec, out_spec = rhs_out.split("->")
        specs = tuple("".join(letters[c] for c in spec) for spec in (lhs_spec, rhs_spec, out_spec))
        spatial = len(lhs_spec) - 2
        fn = jax.jit(lambda x, w, rest=rest, specs=specs, spatial=spatial: lax.conv_general_dilated(
            x, w, window_strides=_window(rest, "stride", [1] * spatial),
            padding=_window(rest, "pad", [(0, 0)] * spatial), lhs_dilation=_window(rest, "lhs_dilate", [1] * spatial),
            rhs_dilation=_window(rest, "rhs_dilate", [1] * spatial), dimension_numbers=specs,
            feature_group_count=int(_attribute(rest, "feature_group_count") or 1),
            batch_group_count=int(_attribute(rest, "batch_group_count") or 1)), compiler_options=compiler_options)
        dtypes = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
        if any(shapes[o][0] not in dtypes for o in operands):
            continue
        args = [jnp.ones(shapes[o][1], dtypes[shapes[o][0]]) for o in operands]
        try:
            out = fn(*args).block_until_ready()
        except Exception:  # an attribute this rebuild does not know: leave the convolution out
            continue
        if out.shape != shapes[name][1]:
            continue
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(*args).block_until_ready()
        timed[name] = (time.perf_counter() - t0) / repeats * 1e3
    return timed
