"""jaxnets' own XLA:CPU kernels (`kernels/*.cc`): built once, loaded, registered with XLA's FFI.

Why kernels of our own: layers XLA:CPU runs far below the machine's speed (measurements: docs/bench/history.md,
"The CPU runtime's own notes"; today's figures: BENCHMARKS.md).
- `pixel_dense`: a narrow dense layer over uint8 pixels (logistic regression, the shallow net), which XLA:CPU can
  only run as a conversion pass that writes the batch back as float32 followed by a library product. The kernel
  converts in registers instead and reads the batch once, as bytes, against weights it transposes and scales
  once per chunk of positions.
- `conv_forward`, `conv_weight_grad`, `conv_input_grad`: stride-1 VALID convolutions with at most 16 output
  channels (LeNet-5): one AVX-512 register holds all the outputs of a position, so the kernels are streams of
  multiply-adds over the NHWC data as it lies (no transposes); with one input channel 16 outputs of a row go
  along the lanes instead; the input gradient is scattered from each output position (conv_input_grad.cc).
- `wide_conv_forward`, `wide_conv_weight_grad`: a convolution with 16·k outputs, any stride and padding, and the
  gradient of its kernel, reading NHWC as it lies where XLA:CPU transposes both operands first. A layer's
  input gradient (16·k inputs too) is the forward kernel over the gradient, kernel flipped: for stride s, s·s
  stride-1 phases (`wide_conv_input_grad`).
- `depthwise_weight_grad`: the kernel gradient of a 3×3 or 5×5 depthwise convolution (EfficientNet-Lite), which
  XLA:CPU runs as one whole-batch reduction per tap; the kernel keeps every tap's sum in a register instead.

The shared library is compiled with the system's C++ compiler (`$CXX`, else `g++`) against the FFI headers that
jaxlib ships, into `native/` of jaxnets' cache (`$JAXNETS_CACHE`, else `~/.cache/jaxnets`), named by a digest of
the source, the jaxlib version and the flags, so a new jaxlib or a changed kernel builds afresh and concurrent
processes never load a half-written file (each writes its own temporary and renames it). The first build prints
one line to stderr (what, where, how long); `python -m jaxnets.runtime.build_kernels` builds ahead of time. They
run only on Linux x86-64 with AVX-512: on ARM, macOS, a CPU without AVX-512, without a compiler, after a failed
build, or with `JAXNETS_CPU_KERNELS=xla`, `available()` is False and the callers compute the same function with
XLA's own operations (the reason is logged once). Each kernel is switched on or off per CPU kind in choice.py.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import choice

log = logging.getLogger(__name__)

ENV = "JAXNETS_CPU_KERNELS"  # "xla" leaves every layer to XLA's operations
KERNELS = Path(__file__).with_name("kernels")
SOURCES = tuple(KERNELS / name for name in ("pixel_dense.cc", "small_conv.cc", "conv_input_grad.cc", "wide_conv.cc",
                                            "depthwise.cc"))
HEADERS = (KERNELS / "parallel.h", KERNELS / "small_conv.h")
TARGET, PIXEL_WEIGHT_GRAD = "jaxnets_pixel_dense", "jaxnets_pixel_dense_weight_grad"
CONV_FORWARD, CONV_WEIGHT_GRAD = "jaxnets_conv_forward", "jaxnets_conv_weight_grad"
CONV_INPUT_GRAD, WIDE_CONV_WEIGHT_GRAD = "jaxnets_conv_input_grad", "jaxnets_wide_conv_weight_grad"
WIDE_CONV_FORWARD, DEPTHWISE_WEIGHT_GRAD = "jaxnets_wide_conv_forward", "jaxnets_depthwise_weight_grad"
CONV_OUTPUTS = 16  # at most this many output channels: one AVX-512 register
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-mavx512f", "-mfma")
OUTPUTS = (1, 2, 4, 8, 16)  # the output widths the kernel takes (divisors of one 16-float register)


def _cpu_has_avx512f() -> bool:
    """Linux on x86-64 with AVX-512F: the only place the kernels can run (ARM and macOS keep XLA's operations)."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512f" in flags.split()


def cache_dir() -> Path:
    from ..cache import cache_dir as jaxnets_cache  # the one cache root ($JAXNETS_CACHE, XDG, ~)

    return jaxnets_cache() / "native"


def library_path() -> Path:
    """Where the build for this source, jaxlib and flags lives."""
    import jaxlib

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (*SOURCES, *HEADERS)) + jaxlib.__version__.encode()
                            + " ".join(FLAGS).encode())
    return cache_dir() / f"kernels-{digest.hexdigest()[:16]}.so"


def build(path: Path) -> None:
    """Compile the kernels into `path` (atomically: a temporary in the same folder, then a rename)."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-I", jax.ffi.include_dir(), *map(str, SOURCES), "-o", tmp],
                              capture_output=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.decode(errors='replace').strip()[-2000:]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)  # mkstemp's 0600 would keep other users of a shared cache from loading it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def why_not() -> str | None:
    """Why the kernels cannot run in this process before anything is built, or None."""
    if os.environ.get(ENV, "").lower() == "xla":
        return f"switched off: {ENV}=xla"
    if not _cpu_has_avx512f():
        return "they need Linux on x86-64 with AVX-512 (not ARM, not macOS)"
    if jax.device_count() > 1:  # an opaque call over a batch sharded across devices would gather it whole
        return "more than one device: a kernel would gather a sharded batch"
    return None


def _build_saying_so(path: Path) -> None:
    """`build`, with one line on stderr: what is built, where it is cached, how long it took (or why it failed)."""
    print(f"jaxnets: building its AVX-512 CPU kernels (runtime/kernels/*.cc, once per jaxlib) into {path} ...",
          end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        build(path)
    except Exception as e:
        print(f" failed after {time.perf_counter() - start:.1f} s ({str(e).splitlines()[0][:200]})", file=sys.stderr)
        raise
    print(f" done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


@functools.cache
def available() -> bool:
    """True once the kernels are built, loaded and registered for the CPU platform (once per process)."""
    if (reason := why_not()) is not None:
        log.info("jaxnets' kernels do not run here (%s); XLA's operations compute those layers", reason)
        return False
    try:
        path = library_path()
        if not path.exists():
            _build_saying_so(path)
        library = ctypes.CDLL(str(path))
        for target in (TARGET, PIXEL_WEIGHT_GRAD, CONV_FORWARD, CONV_WEIGHT_GRAD, CONV_INPUT_GRAD,
                       WIDE_CONV_FORWARD, WIDE_CONV_WEIGHT_GRAD, DEPTHWISE_WEIGHT_GRAD):
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
    except Exception as e:  # whatever goes wrong here, XLA's operations compute the layers
        log.warning("jaxnets' kernels are not available (%s); XLA's operations compute those layers", e)
        return False
    return True


def takes(pixels: jax.Array, kernel: jax.Array) -> bool:
    """Whether `pixel_dense` runs this layer: uint8 pixels, float32 weights, 1/2/4/8/16 outputs."""
    return (pixels.dtype == jnp.uint8 and pixels.ndim >= 2 and pixels.shape[0] > 0 and kernel.dtype == jnp.float32
            and kernel.ndim == 2 and kernel.shape[0] == int(np.prod(pixels.shape[1:]))
            and kernel.shape[1] in OUTPUTS and choice.enabled("pixel_dense_kernel") and available())


def per_position_affine(standardize: Callable, pixels_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per input position (flattened) with standardize(x) = x·scale + shift, read off the function
    itself at pixel values 0 and 255 and checked at 128; None when it is not such a map (then XLA computes the
    layer). Reading it off the function keeps one preprocessing path: the kernel never re-derives the spec."""
    probe = np.zeros((4, *pixels_shape[1:]), np.uint8)
    probe[1], probe[2] = 255, 128
    probe[3] = np.random.default_rng(0).integers(0, 256, pixels_shape[1:], dtype=np.uint8)  # position by position?
    try:
        out = np.asarray(standardize(probe), np.float64).reshape(4, -1)
    except Exception:  # a function the probe cannot go through: XLA computes the layer
        return None
    shift, scale = out[0], (out[1] - out[0]) / 255.0
    expected = probe[2:].reshape(2, -1) * scale + shift
    if out.shape[1] != int(np.prod(pixels_shape[1:])) or not np.allclose(out[2:], expected, rtol=1e-5, atol=1e-5):
        return None
    return scale.astype(np.float32), shift.astype(np.float32)


def pixel_dense(pixels: jax.Array, kernel: jax.Array, bias: jax.Array, scale: np.ndarray,
                shift: np.ndarray) -> jax.Array:
    """(pixels flattened · scale + shift) @ kernel + bias, by the kernel (call only where `takes` is True).
    The kernel's gradient reads the same bytes (a second kernel), the bias's is Σ g; the pixels have none."""
    if np.all(scale == scale[0]) and np.all(shift == shift[0]):  # one value each: no [K] constants to materialise
        scale, shift = scale[:1], shift[:1]
    return _pixel_dense(pixels.reshape(pixels.shape[0], -1), kernel, bias, jnp.asarray(scale), jnp.asarray(shift))


def _call(rows, kernel, bias, scale, shift):
    out = jax.ShapeDtypeStruct((rows.shape[0], kernel.shape[1]), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(rows, scale, shift, kernel, bias)


@jax.custom_vjp
def _pixel_dense(rows, kernel, bias, scale, shift):
    return _call(rows, kernel, bias, scale, shift)


def _pixel_dense_fwd(rows, kernel, bias, scale, shift):
    return _call(rows, kernel, bias, scale, shift), (rows, scale, shift)


def _pixel_dense_bwd(residuals, g):
    rows, scale, shift = residuals
    g = g.astype(jnp.float32)
    d_kernel = jax.ffi.ffi_call(PIXEL_WEIGHT_GRAD, jax.ShapeDtypeStruct((rows.shape[1], g.shape[1]), jnp.float32))(
        rows, g, scale, shift)
    # None: the constants' cotangents are symbolic zeros (materialised, they cost two [K] broadcasts a step)
    return np.zeros(rows.shape, jax.dtypes.float0), d_kernel, g.sum(0), None, None


_pixel_dense.defvjp(_pixel_dense_fwd, _pixel_dense_bwd)


def takes_conv(lhs: jax.Array, rhs: jax.Array) -> bool:
    """Whether `conv_forward`/`conv_weight_grad` run this stride-1 VALID convolution: a float32 NHWC input, a
    float32 HWIO kernel no larger than the image, at most 16 output channels."""
    return (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32 and lhs.ndim == 4 and rhs.ndim == 4
            and lhs.shape[0] > 0 and rhs.shape[2] == lhs.shape[3] and 1 <= rhs.shape[3] <= CONV_OUTPUTS
            and rhs.shape[0] <= lhs.shape[1] and rhs.shape[1] <= lhs.shape[2] and choice.enabled("small_conv_kernel")
            and available())


def conv_forward(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """lax's stride-1 VALID NHWC convolution of `lhs` with the HWIO `rhs`, by the kernel (where `takes_conv`)."""
    n, h, w, _ = lhs.shape
    kh, kw, _, o = rhs.shape
    out = jax.ShapeDtypeStruct((n, h - kh + 1, w - kw + 1, o), jnp.float32)
    return jax.ffi.ffi_call(CONV_FORWARD, out)(lhs, rhs)


def conv_weight_grad(lhs: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """The gradient of that convolution's kernel for the output cotangent `g`: Σ over the batch and the output
    positions of each input window times `g` (where `takes_conv`)."""
    out = jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32)
    return jax.ffi.ffi_call(CONV_WEIGHT_GRAD, out)(lhs, g.astype(jnp.float32))


def conv_input_grad(g: jax.Array, rhs: jax.Array) -> jax.Array:
    """The gradient of that convolution's input for the output cotangent `g` (where `takes_conv`), by the kernel:
    g and the kernel as they lie, no padding or flip."""
    n, oh, ow, _ = g.shape
    kh, kw, c, _ = rhs.shape
    out = jax.ShapeDtypeStruct((n, oh + kh - 1, ow + kw - 1, c), jnp.float32)
    return jax.ffi.ffi_call(CONV_INPUT_GRAD, out)(g.astype(jnp.float32), rhs)


Padding = tuple[tuple[int, int], tuple[int, int]]


def takes_wide_conv(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int], padding: Padding) -> bool:
    """Whether `wide_conv_forward` runs this convolution: float32 NHWC input and HWIO kernel, 16·k outputs, no
    negative padding (lax's crop), at least one output position."""
    if not (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32 and lhs.ndim == 4 and rhs.ndim == 4
            and lhs.shape[0] > 0 and rhs.shape[2] == lhs.shape[3] >= 1 and min(rhs.shape[:2]) >= 1
            and rhs.shape[3] % 16 == 0 and rhs.shape[3] >= 16 and len(strides) == 2 and min(strides) >= 1):
        return False
    sizes = [(lhs.shape[1 + i] + sum(padding[i]) - rhs.shape[i]) // strides[i] + 1 for i in range(2)]
    return min(min(p) for p in padding) >= 0 and min(sizes) >= 1 and choice.enabled("wide_conv_kernel") and available()


def _geometry(strides: tuple[int, int], padding: Padding) -> dict[str, np.int64]:
    return {"stride_h": np.int64(strides[0]), "stride_w": np.int64(strides[1]), "pad_top": np.int64(padding[0][0]),
            "pad_left": np.int64(padding[1][0])}


def wide_conv_forward(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """lax's NHWC/HWIO convolution of `lhs` with these strides and (low, high) padding, none negative (where
    `takes_wide_conv`)."""
    (n, h, w, _), (kh, kw, _, o) = lhs.shape, rhs.shape
    oh = (h + sum(padding[0]) - kh) // strides[0] + 1
    ow = (w + sum(padding[1]) - kw) // strides[1] + 1
    out = jax.ShapeDtypeStruct((n, oh, ow, o), jnp.float32)
    return jax.ffi.ffi_call(WIDE_CONV_FORWARD, out)(lhs, rhs, **_geometry(strides, padding))


def takes_wide_input_grad(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int], padding: Padding) -> bool:
    """Whether `wide_conv_input_grad` computes this convolution's input gradient: as `takes_wide_conv`, with
    16·k input channels (the outputs of the forward kernel it runs)."""
    return takes_wide_conv(lhs, rhs, strides, padding) and rhs.shape[2] % 16 == 0


def _phase(size: int, k: int, stride: int, pad: int, out: int, a: int) -> tuple[int, int, int, int, int]:
    """One axis of one phase of the input gradient: the inputs a, a + stride, ... meet the kernel taps r, r +
    stride, ... (`taps` of them) of the outputs they feed. Returns (r, taps, positions, low, high): the phase's
    input positions are a stride-1 correlation of the output gradient, padded by (low, high), negative = cut, with
    those taps turned by 180°."""
    r = (a + pad) % stride
    taps = max(0, -(-(k - r) // stride))
    shift = (a + pad) // stride
    positions = max(0, -(-(size - a) // stride))
    return r, taps, positions, taps - 1 - shift, positions + shift - out


def _phase_grad(g: jax.Array, rhs: jax.Array, strides: tuple[int, int],
                axes: tuple[tuple[int, ...], tuple[int, ...]]) -> jax.Array:
    """The input gradient at one phase (one `_phase` per axis): the forward kernel over g, cut or padded, with
    that phase's taps turned by 180° and their input and output channels swapped."""
    (rh, th, qh, lo_h, hi_h), (rw, tw, qw, lo_w, hi_w) = axes
    n, c = g.shape[0], rhs.shape[2]
    if min(th, tw, qh, qw) == 0:
        return jnp.zeros((n, qh, qw, c), jnp.float32)
    cut = g[:, max(0, -lo_h):g.shape[1] - max(0, -hi_h), max(0, -lo_w):g.shape[2] - max(0, -hi_w)]
    if min(cut.shape[1:3]) == 0:  # the phase reads only padding
        return jnp.zeros((n, qh, qw, c), jnp.float32)
    turned = jnp.swapaxes(rhs[rh::strides[0], rw::strides[1]][::-1, ::-1], 2, 3)
    pads = ((max(0, lo_h), max(0, hi_h)), (max(0, lo_w), max(0, hi_w)))
    return wide_conv_forward(cut.astype(jnp.float32), turned, (1, 1), pads)


def wide_conv_input_grad(g: jax.Array, rhs: jax.Array, strides: tuple[int, int], padding: Padding,
                         size: tuple[int, int]) -> jax.Array:
    """The input gradient of a convolution of an input of spatial `size` (where `takes_wide_input_grad`). With
    stride s it falls into s·s phases, each a stride-1 convolution of g (the sub-pixel split); XLA's own runs as a
    convolution with a dilated input, at a fraction of its stride-1 speed. The phases are interleaved last."""
    geometry = [[_phase(size[i], rhs.shape[i], strides[i], padding[i][0], g.shape[1 + i], a)
                 for a in range(strides[i])] for i in range(2)]
    qh, qw = (-(-size[i] // strides[i]) for i in range(2))
    phases = jnp.stack([jnp.stack([_filled(_phase_grad(g, rhs, strides, (ah, aw)), qh, qw) for aw in geometry[1]],
                                  axis=3) for ah in geometry[0]], axis=2)  # [n, qh, stride_h, qw, stride_w, c]
    return phases.reshape(g.shape[0], qh * strides[0], qw * strides[1], rhs.shape[2])[:, :size[0], :size[1]]


def _filled(phase: jax.Array, rows: int, cols: int) -> jax.Array:
    """A phase padded with zeros to the first phase's positions (the others may hold one fewer)."""
    return jnp.pad(phase, ((0, 0), (0, rows - phase.shape[1]), (0, cols - phase.shape[2]), (0, 0)))


def wide_conv_weight_grad(lhs: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                          padding: Padding) -> jax.Array:
    """The kernel's gradient of lax's NHWC/HWIO convolution of `lhs` with these strides and (low, high) padding,
    for the output cotangent `g` (where `takes_wide_conv`: it was measured faster than XLA's on every
    layer of the standard set, 1.3-8x, 1x1 to 5x5, 64 to 1280 channels); the high padding is implied by g's shape."""
    out = jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32)
    return jax.ffi.ffi_call(WIDE_CONV_WEIGHT_GRAD, out)(lhs, g.astype(jnp.float32), **_geometry(strides, padding))


def takes_depthwise_weight_grad(x: jax.Array, g: jax.Array, k: int, stride: int, pads: Padding) -> bool:
    """Whether `depthwise_weight_grad` computes this depthwise convolution's kernel gradient: float32 NHWC x and
    g with the same channels, a 3×3 or 5×5 filter, a positive stride, no negative padding."""
    return (x.dtype == jnp.float32 and g.dtype == jnp.float32 and x.ndim == 4 and g.ndim == 4 and k in (3, 5)
            and g.shape[0] == x.shape[0] and g.shape[3] == x.shape[3] >= 1 and stride >= 1
            and min(min(p) for p in pads) >= 0 and choice.enabled("depthwise_kernel") and available())


def depthwise_weight_grad(x: jax.Array, g: jax.Array, k: int, stride: int, pads: Padding) -> jax.Array:
    """The k×k×1×C kernel gradient of models/depthwise.py's convolution of `x` (low padding pads[i][0]; the high
    padding is implied by g's shape) for the output cotangent `g` (where `takes_depthwise_weight_grad`)."""
    out = jax.ShapeDtypeStruct((k, k, 1, x.shape[3]), jnp.float32)
    return jax.ffi.ffi_call(DEPTHWISE_WEIGHT_GRAD, out)(x, g, stride=np.int64(stride), pad_top=np.int64(pads[0][0]),
                                                        pad_left=np.int64(pads[1][0]))


def main(argv: list[str] | None = None) -> int:
    """Build jaxnets' CPU kernels now, ahead of the first step that needs them, and say where they are or why they
    cannot run here. Exit status 0 when they are ready, 1 when XLA's operations will compute those layers."""
    import argparse

    argparse.ArgumentParser(prog="python -m jaxnets.runtime.build_kernels", description=main.__doc__).parse_args(argv)
    if (reason := why_not()) is not None:
        print(f"jaxnets' CPU kernels do not run here ({reason}); XLA's operations compute those layers")
        return 1
    if available():
        print(f"jaxnets' CPU kernels are ready: {library_path()}")
        return 0
    print("jaxnets' CPU kernels could not be built (see above); XLA's operations compute those layers")
    return 1
