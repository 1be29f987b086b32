"""Which of the CPU fast paths run, per CPU kind: one table, one switch.

Every path of cpu.py and native.py has a name here. A path runs unless the table switches it off for this machine's
kind or `JAXNETS_CPU_OFF` names it (a comma-separated list of names, or "all"); `JAXNETS_CPU_ON` names paths to run
even where the table switches them off (how they are measured again, by tools/kernel_table.py, and tested).
The older switches stay:
`JAXNETS_CPU_DOTS=xla` is `ynn_dots` off, `JAXNETS_CPU_KERNELS=xla` is every kernel of native.py off.
Each path is measured on whole train and predict steps per kind (BENCHMARKS.md); one that does not earn its place
on a kind is listed in `OFF_ON` for it. The table was measured with every kernel running, so it is not applied
while any of native.py's kernels is off (named in `JAXNETS_CPU_OFF` too): then every other path runs.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

PATHS = {
    "ynn_dots": "every dot (and the dots convolutions become) through YNNPACK (an XLA compiler option)",
    "one_channel_conv": "a stride-1 VALID convolution of a one-channel image as a sum of shifted slices",
    "few_channel_conv": "<= 16 input channels (2-16 beside one_channel_conv), stride 1, VALID: the input gradient as "
                        "one matmul + col2im, jaxnets' kernels where they run",
    "stored_input_conv": ">= 64 input channels (or a wide kernel's layer): gradients from the stored input",
    "narrow_dense": "<= 10 outputs from >= 512 inputs: the kernel's gradient as g^T x from a buffer",
    "batch_norm_sums": "BatchNorm's statistics and gradients as channel sums over the batch axis first",
    "conv_bias_sums": "a convolution's bias gradient as a channel sum of the stored cotangent",
    "pixel_dense_kernel": "native: a narrow first layer straight from uint8 pixels (kernels/pixel_dense.cc)",
    "small_conv_kernel": "native: stride-1 VALID convolutions with <= 16 outputs (kernels/small_conv.cc)",
    "wide_conv_kernel": "native: convolutions with 16k outputs, forward and gradients (kernels/wide_conv.cc)",
    "depthwise_kernel": "native: a 3x3 or 5x5 depthwise convolution's kernel gradient (kernels/depthwise.cc)",
}
NATIVE = ("pixel_dense_kernel", "small_conv_kernel", "wide_conv_kernel", "depthwise_kernel")

# The CPU kinds jaxnets is measured on, and the paths switched off there: a path that speeds up no whole step of
# the standard set by >= 5 % on a kind (tools/kernel_table.py; the table in BENCHMARKS.md) is off on that kind.
# The table was measured with jaxnets' kernels running, so it applies only where they run: without them a path
# listed here may be what computes a layer they would take (narrow_dense: the first layer of logistic regression).
# amd-avx512, measured on AMD EPYC Zen 4 (family 25 model 17), 2026-12-07: narrow_dense gains +2 % at best (a
# 4096- or 512-input head), -3 to -8 % elsewhere; the pixel-dense kernel takes the layers it was written for.
# one_channel_conv (shifted slices when predicting) -4 % since the small-conv kernel's one-channel forward,
# which then takes LeNet-5's first layer through few_channel_conv
# Zen 5 (family 26 model 2), 2026-12-08: the same (narrow_dense's gains are noise in a one-process A/B)
_AMD_OFF = frozenset({"narrow_dense", "one_channel_conv"})
OFF_ON: dict[str, frozenset[str]] = {
    "amd-avx512": _AMD_OFF,
    # Intel Xeon with AVX-512 (Ice Lake and later): not measured by jaxnets; the AMD kinds' table, whose reasons
    # (jaxnets' kernels take those paths' layers) hold wherever the kernels run, until tools/kernel_table.py says
    "intel-avx512": _AMD_OFF,
    "other": frozenset(),  # no AVX-512 (ARM, macOS, older x86): the native kernels cannot run there anyway
}
OFF_ENV = "JAXNETS_CPU_OFF"
ON_ENV = "JAXNETS_CPU_ON"


@functools.cache
def cpu_kind() -> str:
    """"amd-avx512", "intel-avx512" or "other", from /proc/cpuinfo (Linux x86-64 only)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").exists():
        return "other"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "other"
    field = lambda name: next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), "")  # noqa: E731
    if "avx512f" not in field("flags").split():
        return "other"
    return {"AuthenticAMD": "amd-avx512", "GenuineIntel": "intel-avx512"}.get(field("vendor_id"), "other")


def switched_off(kernels_run: bool = True) -> frozenset[str]:
    """The paths that do not run in this process: those `JAXNETS_CPU_OFF` names, and the table's for this kind
    (less those `JAXNETS_CPU_ON` names) where jaxnets' kernels run (`kernels_run`: cpu.py asks native.py)."""
    off = _named(OFF_ENV)
    if os.environ.get("JAXNETS_CPU_DOTS", "").lower() == "xla":
        off.add("ynn_dots")
    if os.environ.get("JAXNETS_CPU_KERNELS", "").lower() == "xla":
        off.update(NATIVE)
    if kernels_run and not off & set(NATIVE):
        off |= OFF_ON.get(cpu_kind(), frozenset()) - _named(ON_ENV)
    return frozenset(off)


def _named(variable: str) -> set[str]:
    """The paths an environment variable names (comma-separated, or "all"); a name that is no path is an error."""
    names = {n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()}
    unknown = names - set(PATHS) - {"all"}
    if unknown:
        raise ValueError(f"{variable} names no path {', '.join(sorted(unknown))}; the paths: {', '.join(PATHS)}")
    return set(PATHS) if "all" in names else names


def enabled(name: str, kernels_run: bool = True) -> bool:
    """Whether the path `name` (a key of PATHS) runs in this process (see `switched_off`)."""
    if name not in PATHS:
        raise KeyError(name)
    return name not in switched_off(kernels_run)
