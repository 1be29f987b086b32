"""The backend module: CPU speed options chosen by the platform, accepted by this jaxlib, switchable off,
and never changing what a model computes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import runtime
from jaxnets.models import create_model
from jaxnets.models.layers import Conv, Dense
from jaxnets.runtime import choice, cpu, host, native, reductions

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are for XLA:CPU")


def test_cpu_steps_use_ynnpack_dots_and_the_environment_switch_turns_them_off(monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)
    assert cpu.compiler_options() == cpu.YNN_DOTS
    monkeypatch.setenv(cpu.ENV, "xla")
    assert cpu.compiler_options() is None
    monkeypatch.setenv(cpu.ENV, "fast")
    with pytest.raises(ValueError, match="ynn"):
        cpu.compiler_options()


def test_a_convnet_gives_the_same_logits_and_gradients_with_and_without_the_options(monkeypatch):
    # eval mode (train-mode BatchNorm on a tiny batch would amplify any rounding); AlexNet at 32 px is
    # small enough to stay quick and has both convolutions and dense layers
    model = create_model("alexnet", 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        return jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x, train=False)))

    results = {}
    for dots in ("xla", "ynn"):
        monkeypatch.setenv(cpu.ENV, dots)
        results[dots] = runtime.jit(jax.value_and_grad(loss))(variables["params"])
    for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results["ynn"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(a))) + 1e-7)


def _convs(fun, *args) -> int:
    return str(jax.make_jaxpr(fun)(*args)).count("conv_general_dilated")


def test_lenet_is_plain_flax_and_its_one_channel_conv_runs_as_shifted_slices_only_inside_runtime_steps():
    model = create_model("lenet5", 10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    plain = lambda v, x: model.apply(v, x)  # noqa: E731
    assert _convs(plain, variables, x) == 2  # the model itself: two lax convolutions
    # conv1 became shifted slices or jaxnets' kernel (the kind's table); conv2 the kernel where it is built, else lax's
    assert _convs(cpu.with_cpu_kernels(plain), variables, x) == (0 if native.available() else 1)
    np.testing.assert_allclose(runtime.jit(plain)(variables, x), jax.jit(plain)(variables, x), rtol=1e-5, atol=1e-5)

    def grads(wrap):
        loss = lambda v, x: jnp.sum(jnp.tanh(model.apply(v, x)) ** 2)  # noqa: E731
        return jax.jit(wrap(jax.grad(loss, argnums=(0, 1))))(variables, x)

    for got, want in zip(jax.tree.leaves(grads(cpu.with_cpu_kernels)), jax.tree.leaves(grads(lambda f: f)),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((2, 12, 12, 17), (3, 3, 17, 4), (1, 1), "VALID"),  # between the few-channel and the wide paths
    ((2, 12, 12, 1), (3, 3, 1, 4), (2, 2), "VALID"),   # strided
    ((2, 12, 12, 1), (3, 3, 1, 4), (1, 1), "SAME"),    # padded
])
def test_other_convolutions_stay_lax_bit_for_bit(shape, kernel, strides, padding):
    conv = Conv(kernel[-1], kernel[:2], strides=strides, padding=padding)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    apply = lambda v, x: conv.apply(v, x)  # noqa: E731
    assert _convs(cpu.with_cpu_kernels(apply), variables, x) == 1
    np.testing.assert_array_equal(cpu.with_cpu_kernels(apply)(variables, x), apply(variables, x))


@pytest.mark.parametrize("shape, kernel", [((3, 14, 14, 6), (5, 5, 6, 16)), ((2, 9, 7, 3), (3, 2, 3, 5))])
def test_a_few_channel_convolution_has_lax_values_and_gradients(shape, kernel):
    # LeNet-5's second layer (6 → 16, 5×5) and an uneven one: the input gradient is computed as matmul + col2im
    conv = Conv(kernel[-1], kernel[:2], padding="VALID")
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, x: jnp.sum(jnp.sin(conv.apply(v, x)))  # noqa: E731
    fast = jax.jit(cpu.with_cpu_kernels(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    assert "custom_vjp" in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables, x))
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_a_few_channel_input_gradient_in_bfloat16_is_as_accurate_as_lax():
    # the windows are summed in float32, as lax accumulates: summed in bfloat16 the error was 4× lax's
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 14, 14, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 6, 16)) / 10, jnp.float32)
    g = jnp.asarray(rng.normal(size=(8, 10, 10, 16)), jnp.float32)

    def input_gradient(conv, dtype):
        return jax.vjp(lambda x: conv(x, w.astype(dtype)), x.astype(dtype))[1](g.astype(dtype))[0]

    exact = input_gradient(cpu._lax_valid_conv, jnp.float32)
    scale = float(jnp.max(jnp.abs(exact)))
    ours = float(jnp.max(jnp.abs(input_gradient(cpu._few_channel_conv, jnp.bfloat16) - exact))) / scale
    lax = float(jnp.max(jnp.abs(input_gradient(cpu._lax_valid_conv, jnp.bfloat16) - exact))) / scale
    assert ours <= 1.5 * lax + 1e-4


@pytest.mark.parametrize("strides, padding", [((1, 1), [(1, 1), (1, 1)]), ((2, 2), "SAME"), ((2, 2), "VALID")])
def test_a_wide_convolution_has_lax_values_and_gradients_from_its_stored_input(strides, padding, monkeypatch):
    # ResNet's and VGG's convolutions (≥ 64 input channels): lax's own gradient, read from the stored input (on,
    # whatever this CPU kind's table says: the path is tested wherever it may run)
    monkeypatch.setenv(choice.ON_ENV, "stored_input_conv")
    conv = Conv(8, (3, 3), strides=strides, padding=padding)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 9, 9, cpu.WIDE_CHANNELS)), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, x: jnp.sum(jnp.sin(conv.apply(v, jax.nn.relu(x) * 2)))  # noqa: E731
    fast = jax.jit(cpu.with_cpu_kernels(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    gradient = jax.make_jaxpr(cpu.with_cpu_kernels(jax.grad(loss)))(variables, x)
    assert "cond[" in str(gradient)  # the custom VJP's weight gradient reads the stored input (`_materialized`)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("channels, strides, dtype", [
    (3, (4, 4), jnp.float32), (3, (4, 4), jnp.bfloat16), (1, (1, 1), jnp.float32),
    (cpu.WIDE_CHANNELS, (1, 1), jnp.float32)])
def test_a_convolution_bias_has_its_gradient_summed_by_channel(channels, strides, dtype):
    # AlexNet's first layer: bias, ReLU, max pool — the bias gradient a channel_sum of the stored cotangent
    from jaxnets.models.layers import max_pool

    conv = Conv(8, (5, 5), strides=strides, padding="SAME", dtype=dtype)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(3, 17, 17, channels)), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    variables = {"params": {**variables["params"], "bias": jnp.linspace(-0.5, 0.5, 8)}}
    loss = lambda v, x: jnp.sum(jnp.sin(max_pool(jax.nn.relu(conv.apply(v, x)), 3, 2)).astype(jnp.float32))  # noqa: E731
    assert "bias_add" in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables, x))
    fast = jax.jit(cpu.with_cpu_kernels(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    tolerance = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        assert got.dtype == want.dtype
        want = np.asarray(want, np.float32)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tolerance,
                                   atol=tolerance * float(np.max(np.abs(want))))


def test_a_convolution_whose_bias_has_another_dtype_keeps_flax_promotion():
    # a hand-mixed parameter tree (bfloat16 kernel, float32 bias): Flax promotes the output to float32
    conv = Conv(4, (3, 3))
    x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
    params = conv.init(jax.random.PRNGKey(0), x)["params"]
    variables = {"params": {"kernel": params["kernel"].astype(jnp.bfloat16), "bias": params["bias"] + 0.5}}
    fast, plain = jax.jit(cpu.with_cpu_kernels(conv.apply))(variables, x), conv.apply(variables, x)
    assert fast.dtype == plain.dtype == jnp.float32
    np.testing.assert_allclose(fast, plain, rtol=1e-6)


def test_a_convolution_without_bias_gets_no_bias_path():
    conv = Conv(4, (3, 3), use_bias=False)
    x = jnp.ones((2, 6, 6, 3))
    variables = conv.init(jax.random.PRNGKey(0), x)
    assert "bias_add" not in str(jax.make_jaxpr(cpu.with_cpu_kernels(conv.apply))(variables, x))
    np.testing.assert_allclose(jax.jit(cpu.with_cpu_kernels(conv.apply))(variables, x), conv.apply(variables, x),
                               rtol=1e-6)


def test_the_stored_input_is_the_input_even_when_it_is_not_finite():
    x = jnp.asarray([[np.nan, 1.0], [np.inf, -np.inf]])
    for value in (x, x[::-1], jnp.zeros(3)):
        np.testing.assert_array_equal(jax.jit(reductions.materialized)(value), value)


@pytest.mark.parametrize("batch_shape, dtype", [((6,), jnp.float32), ((2, 3), jnp.float32), ((6,), jnp.bfloat16)])
def test_a_narrow_dense_layer_has_lax_values_and_gradients(batch_shape, dtype, monkeypatch):
    # a head of few outputs from many inputs: the kernel's gradient as gᵀ·x, transposed (on, whatever this CPU
    # kind's table says)
    monkeypatch.setenv(choice.ON_ENV, "narrow_dense")
    dense = Dense(cpu.NARROW_OUTPUTS, dtype=dtype)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(*batch_shape, cpu.NARROW_INPUTS)), jnp.float32)
    variables = dense.init(jax.random.PRNGKey(0), x)
    loss = lambda v, x: jnp.sum(jnp.sin(dense.apply(v, x)).astype(jnp.float32))  # noqa: E731
    fast = jax.jit(cpu.with_cpu_kernels(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    assert "custom_vjp" in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables, x))
    assert "cond[" in str(jax.make_jaxpr(cpu.with_cpu_kernels(jax.grad(loss)))(variables, x))  # gᵀ·x, stored
    tolerance = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                                   atol=tolerance * float(jnp.max(jnp.abs(want.astype(jnp.float32)))))


@pytest.mark.parametrize("features, inputs", [(cpu.NARROW_OUTPUTS + 1, cpu.NARROW_INPUTS),
                                              (cpu.NARROW_OUTPUTS, cpu.NARROW_INPUTS - 1)])
def test_dense_layers_outside_the_narrow_shape_keep_lax_gradient(features, inputs, monkeypatch):
    # wider layers (XLA's own product is faster there) and short inputs are left as they are, even with the path on
    monkeypatch.setenv(choice.ON_ENV, "narrow_dense")
    dense = Dense(features)
    x = jnp.ones((4, inputs))
    variables = dense.init(jax.random.PRNGKey(0), x)
    loss = lambda v: jnp.sum(dense.apply(v, x))  # noqa: E731
    assert "custom_vjp" not in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables))


_PAGE_FAULTS = """
import ctypes, resource, sys
import jax, jax.numpy as jnp, numpy as np
from jaxnets import runtime
if sys.argv[1] == "keep":
    runtime.tune_process()  # what the jaxnets command does first
    runtime.training_process()  # what building a train step does
else:  # the control: glibc made to map and unmap every buffer above 128 KiB (its dynamic threshold pinned)
    mallopt = ctypes.CDLL(None).mallopt
    mallopt(-3, 128 * 1024), mallopt(-1, 128 * 1024)
# a step whose temporary buffers are a few MB (the shallow net's normalised input is 6 MB)
step = runtime.jit(lambda w, x: jax.grad(lambda w: jnp.sum(jnp.tanh(
    (x.astype(jnp.float32) / 255).reshape(32, -1) @ w)))(w))
w, x = jnp.ones((49152, 4)), jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 128, 128, 3), np.uint8))
for _ in range(20):
    jax.block_until_ready(step(w, x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    jax.block_until_ready(step(w, x))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200)
"""


def test_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    import os
    import subprocess
    import sys

    if host._mallopt() is None:  # not glibc (or switched off): nothing to keep; this process's own settings untouched
        pytest.skip("not glibc: no mallopt")

    def faults_per_call(choice: str) -> float:
        out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, choice], env={**os.environ, host.MALLOC_ENV: "keep"},
                             capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    kept, unmapped = faults_per_call("keep"), faults_per_call("unmap")
    # the normalised batch alone is 1,536 pages of 4 KiB: mapped afresh every call, it faults them all in again;
    # kept mapped, a call faults in almost nothing (1–21 measured; the rest is Python's own allocations)
    assert unmapped > 32 * 128 * 128 * 3 * 4 // 4096 / 2, unmapped
    assert kept < unmapped / 20, (kept, unmapped)


_BIG_BUFFER_FAULTS = """
import resource, statistics, threading
import jax, jax.numpy as jnp
from jaxnets import runtime
runtime.tune_process()  # what the jaxnets command does first
runtime.training_process()  # what building a train step does
# a step with a 128 MB temporary buffer (x @ w, kept for tanh's gradient): above the 64 MB that a thread's own
# glibc arena can hold, as ResNet-18's 272 MB one is
step = runtime.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))))
x, w = jnp.ones((4096, 16)), jnp.full((16, 8192), 0.01)
faults = []
def calls():  # on a thread started after import, like XLA's workers: the main thread always has the main heap
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(step(w, x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=calls)
thread.start(), thread.join()
print(statistics.median(faults[10:]))
"""


def test_buffers_above_an_arenas_reach_are_kept_too():
    import os
    import subprocess
    import sys

    if host._mallopt() is None:  # not glibc (or switched off): nothing to keep; this process's own settings untouched
        pytest.skip("not glibc: no mallopt")

    def faults_per_call(choice: str) -> float:
        out = subprocess.run([sys.executable, "-c", _BIG_BUFFER_FAULTS], env={**os.environ, host.MALLOC_ENV: choice},
                             capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    kept, system = faults_per_call("keep"), faults_per_call("system")
    # glibc's defaults map the 128 MB buffer afresh every call (32,768 pages of 4 KiB); kept, none in most calls
    # (the heap grows twice while a call's buffer is still held as the next one starts, then stays)
    assert system > 128 * 2**20 // 4096 / 2, system
    assert kept < 100, (kept, system)


_RELEASED = """
import time
import jax, jax.numpy as jnp
from jaxnets import runtime
runtime.tune_process()
runtime.training_process()
big = jax.jit(lambda x: jnp.sin(x) * 2)  # a 400 MB result, made and dropped: the heap keeps it (never trimmed)
jax.block_until_ready(big(jnp.ones((100, 2**20)))).delete()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
held = rss_mb()
for _ in range(100):  # XLA frees a deleted buffer on its own thread, a moment later
    runtime.release_training_memory()  # what fit does when it returns
    if rss_mb() < held - 300:
        break
    time.sleep(0.05)
print(held, rss_mb())
"""


def test_a_finished_training_run_hands_its_kept_memory_back():
    import os
    import subprocess
    import sys

    if host._mallopt() is None:
        pytest.skip("not glibc: no mallopt")
    out = subprocess.run([sys.executable, "-c", _RELEASED], env={**os.environ, host.MALLOC_ENV: "keep"},
                         capture_output=True, text=True, check=True)
    held, released = map(int, out.stdout.split()[-2:])
    assert held - released > 300, (held, released)  # the 400 MB block was resident until released


def test_the_shared_heap_is_for_cpu_processes_only(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host._cpu_process()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host._cpu_process()


def test_the_malloc_switch_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv(host.MALLOC_ENV, "fast")
    host.keep_freed_memory.cache_clear()
    try:
        with pytest.raises(ValueError, match="keep"):
            host.keep_freed_memory()
        assert host.tune_process() is False  # the CLI's first call: nothing set, no error before its one-line handler
        with pytest.raises(ValueError, match="keep"):
            host.training_process(True)  # building a train step in that tuned process: refused there
    finally:
        monkeypatch.delenv(host.MALLOC_ENV)
        host.keep_freed_memory.cache_clear()
        host._asked = False  # this pytest process was never meant to be tuned


_UNTUNED = """
import ctypes, json
from jaxnets import runtime
from jaxnets.runtime import host
runtime.training_process()  # a notebook calling fit: no tune_process() before it
print(json.dumps({"kept": host._kept, "cached": host.keep_freed_memory.cache_info().currsize}))
"""


def test_a_train_step_in_a_process_nobody_tuned_keeps_malloc_as_it_was():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _UNTUNED], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.split("\n")[-2]) == {"kept": False, "cached": 0}


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (4, 5, 6, 8)])
def test_channel_sums_are_sums_over_every_axis_but_the_last(shape):
    v = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)
    np.testing.assert_allclose(jax.jit(reductions.channel_sum)(v), jnp.sum(v, tuple(range(len(shape) - 1))), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(4, 5, 6, 8), (1, 5, 6, 8), (3, 4, 8), (6, 8), (1, 8)])
def test_batch_norm_trains_the_same_through_the_cpu_pieces(dtype, shape):
    # ResNet's and VGG-BN's BatchNorm (and one after a Dense, or on a batch of one): statistics and gradients
    # from `channel_sum`s (custom VJPs) — the same output, gradients and running statistics as the module's own
    from jaxnets.models.layers import BatchNorm

    bn = BatchNorm(dtype=dtype)
    x = jnp.asarray(np.random.default_rng(6).normal(size=shape) * 3 + 1, jnp.float32).astype(dtype)
    stats = bn.init(jax.random.PRNGKey(0), x)["batch_stats"]
    params = {"scale": jnp.linspace(0.5, 2, 8), "bias": jnp.linspace(-1, 1, 8)}

    def loss(p, x):
        y, updates = bn.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y.astype(jnp.float32)) * jnp.arange(8)), updates

    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    assert str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(params, x)).count("custom_vjp") == 2
    fast, slow = jax.jit(cpu.with_cpu_kernels(grad))(params, x), jax.jit(grad)(params, x)
    tolerance = 3e-2 if dtype == jnp.bfloat16 else 2e-5
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        assert got.dtype == want.dtype
        want = np.asarray(want, np.float32)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tolerance,
                                   atol=tolerance * float(np.max(np.abs(want))))


def test_batch_norm_in_inference_mode_is_unchanged_by_the_cpu_pieces():
    from jaxnets.models.layers import BatchNorm

    bn = BatchNorm(use_running_average=True)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 3, 3, 4)), jnp.float32)
    variables = bn.init(jax.random.PRNGKey(0), x)
    variables = {"params": variables["params"], "batch_stats": {"mean": jnp.arange(4.0), "var": jnp.arange(1.0, 5)}}
    np.testing.assert_allclose(jax.jit(cpu.with_cpu_kernels(bn.apply))(variables, x), jax.jit(bn.apply)(variables, x),
                               rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the one extension point (issue 33, point 2)

def _model_step(name, shape, train):
    model = create_model(name, 10)
    x = jnp.asarray(np.random.default_rng(11).normal(size=shape), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        if train:
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply({**variables, "params": params}, x)
        return jnp.sum(jnp.tanh(logits) ** 2)

    return jax.value_and_grad(loss), variables["params"]


@pytest.mark.parametrize("name, shape, train", [
    ("lenet5", (8, 32, 32, 1), False),      # one- and few-channel convolutions, biases, dense layers
    ("resnet18", (16, 32, 32, 3), True),    # wide convolutions, train-mode BatchNorm (16 values a channel at 1×1)
    # a (0, 1)-padded stride-2 stem, 1×1 convs beside depthwise sums; in inference mode, because in train mode the
    # gradient of a batch norm's bias followed by another train-mode batch norm is zero up to float noise
    ("efficientnet_lite0", (4, 64, 64, 3), False),
])
def test_a_model_computes_the_same_values_and_gradients_with_and_without_the_fast_path(name, shape, train):
    step, params = _model_step(name, shape, train)
    # the fast path is really taken inside runtime.jit (its custom VJPs or jaxnets' kernels are in the trace), and
    # nowhere outside it
    def custom(fun):
        jaxpr = str(jax.make_jaxpr(fun)(params))
        return jaxpr.count("custom_vjp_call[") + jaxpr.count("ffi_call[")

    assert custom(cpu.with_cpu_kernels(step)) > custom(step)
    fast, plain = runtime.jit(step)(params), jax.jit(step)(params)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want))) + 1e-7)


def test_jaxnets_layers_have_flax_variables_and_values():
    # Conv and Dense are nn.Conv's and nn.Dense's parameters, initialisers and function: checkpoints, imported
    # torchvision weights and parameter counts are unchanged
    x = jnp.asarray(np.random.default_rng(12).normal(size=(2, 13, 11, 3)), jnp.float32)
    pairs = [(Conv(8, (3, 3), (2, 2), padding=[(1, 1), (1, 1)]), nn.Conv(8, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])),
             (Conv(4, (5, 5), padding="VALID", use_bias=False), nn.Conv(4, (5, 5), padding="VALID", use_bias=False)),
             (Conv(3, (3, 3), feature_group_count=3, dtype=jnp.bfloat16),
              nn.Conv(3, (3, 3), feature_group_count=3, dtype=jnp.bfloat16)),
             (Dense(5), nn.Dense(5))]
    for ours, theirs in pairs:
        a, b = ours.init(jax.random.PRNGKey(1), x), theirs.init(jax.random.PRNGKey(1), x)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(ours.apply(a, x), theirs.apply(b, x))


def test_flax_modules_themselves_are_left_as_flax_wrote_them():
    # no interception: a model built from flax's own nn.Conv runs flax's code inside runtime.jit too
    conv = nn.Conv(16, (5, 5), padding="VALID")
    x = jnp.ones((2, 12, 12, 6))
    variables = conv.init(jax.random.PRNGKey(0), x)
    assert str(jax.make_jaxpr(cpu.with_cpu_kernels(conv.apply))(variables, x)) == str(
        jax.make_jaxpr(conv.apply)(variables, x))


def test_every_path_can_be_switched_off_and_unknown_names_are_refused(monkeypatch):
    step, params = _model_step("lenet5", (4, 32, 32, 1), False)
    monkeypatch.setenv(choice.OFF_ENV, "all")
    assert choice.switched_off() == frozenset(choice.PATHS)
    assert cpu.compiler_options() is None
    assert "custom_vjp" not in str(jax.make_jaxpr(cpu.with_cpu_kernels(step))(params))
    monkeypatch.setenv(choice.OFF_ENV, "one_channel_conv, conv_bias_sums")
    assert {"one_channel_conv", "conv_bias_sums"} <= choice.switched_off()
    assert cpu.layer_ops().bias_add is layers_plain().bias_add
    monkeypatch.setenv(choice.OFF_ENV, "wide_conv")
    with pytest.raises(ValueError, match="wide_conv_kernel"):
        choice.switched_off()
    assert set(choice.OFF_ON) >= {"amd-avx512", "intel-avx512", "other"}
    assert all(off <= set(choice.PATHS) for off in choice.OFF_ON.values())


def test_the_kinds_table_switches_paths_off_and_jaxnets_cpu_on_brings_them_back(monkeypatch):
    for variable in (choice.OFF_ENV, choice.ON_ENV, "JAXNETS_CPU_KERNELS", "JAXNETS_CPU_DOTS"):
        monkeypatch.delenv(variable, raising=False)
    # the table applies where jaxnets' kernels run (it was measured with them), and not where they are off
    table = choice.OFF_ON[choice.cpu_kind()]
    assert choice.switched_off() == table
    assert choice.switched_off(kernels_run=False) == frozenset()
    assert choice.OFF_ON["amd-avx512"] == {"narrow_dense", "one_channel_conv"}  # measured: BENCHMARKS.md
    assert choice.OFF_ON["intel-avx512"] == choice.OFF_ON["amd-avx512"]  # not measured: the best evidence
    monkeypatch.setenv("JAXNETS_CPU_KERNELS", "xla")
    assert choice.switched_off() == set(choice.NATIVE)
    monkeypatch.delenv("JAXNETS_CPU_KERNELS")
    monkeypatch.setenv(choice.ON_ENV, "all")
    assert choice.switched_off() == frozenset()
    monkeypatch.setenv(choice.OFF_ENV, "ynn_dots")  # an explicit off wins over the on-list
    assert choice.switched_off() == {"ynn_dots"}
    monkeypatch.setenv(choice.ON_ENV, "no_such_path")
    with pytest.raises(ValueError, match="JAXNETS_CPU_ON names no path no_such_path"):
        choice.switched_off()
    # a path off by the table is not taken: a narrow head keeps lax's gradient there, and takes gᵀ·x when named on
    dense = Dense(cpu.NARROW_OUTPUTS)
    x = jnp.ones((4, cpu.NARROW_INPUTS))
    variables = dense.init(jax.random.PRNGKey(0), x)
    loss = lambda v: jnp.sum(dense.apply(v, x))  # noqa: E731
    monkeypatch.setenv(choice.ON_ENV, "narrow_dense")
    monkeypatch.setenv(choice.OFF_ENV, "")
    assert "custom_vjp" in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables))
    monkeypatch.setenv(choice.ON_ENV, "")
    taken = "custom_vjp" in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables))
    assert taken == ("narrow_dense" not in table or not native.available())


def layers_plain():
    from jaxnets.models.layers import PLAIN_OPS

    return PLAIN_OPS


def test_a_one_channel_layer_runs_jaxnets_kernel_when_differentiated_and_shifted_slices_when_not(monkeypatch):
    # LeNet-5's first layer where one_channel_conv runs: shifted slices when predicting, the kernel in a train step
    monkeypatch.setenv(choice.ON_ENV, "one_channel_conv")
    conv = Conv(6, (5, 5), padding="VALID")
    x = jnp.asarray(np.random.default_rng(7).normal(size=(4, 16, 16, 1)), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v: jnp.sum(jnp.sin(conv.apply(v, x)))  # noqa: E731
    forward = str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables))
    gradient = str(jax.make_jaxpr(cpu.with_cpu_kernels(jax.grad(loss)))(variables))
    assert native.CONV_FORWARD not in forward and "custom_vjp_call[" in forward
    assert (native.CONV_FORWARD in gradient) == native.takes_conv(x, variables["params"]["kernel"])
    fast = jax.jit(cpu.with_cpu_kernels(jax.value_and_grad(loss)))(variables)
    slow = jax.jit(jax.value_and_grad(loss))(variables)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    # where the kind's table switches the path off (AMD), the kernel's one-channel forward predicts too
    monkeypatch.setenv(choice.ON_ENV, "")
    if "one_channel_conv" in choice.switched_off(kernels_run=native.available()) and native.available():
        assert native.CONV_FORWARD in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables))
        np.testing.assert_allclose(jax.jit(cpu.with_cpu_kernels(loss))(variables), jax.jit(loss)(variables),
                                   rtol=1e-5)


def test_a_one_channel_layer_without_its_path_has_lax_values_and_gradients(monkeypatch):
    # one_channel_conv off (as the AMD table has it, or by name): few_channel_conv takes the layer, kernels or not
    monkeypatch.setenv(choice.OFF_ENV, "one_channel_conv")
    conv = Conv(6, (5, 5), padding="VALID")
    x = jnp.asarray(np.random.default_rng(8).normal(size=(3, 14, 17, 1)), jnp.float32)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, x: jnp.sum(jnp.sin(conv.apply(v, x)))  # noqa: E731
    assert "custom_vjp_call[" in str(jax.make_jaxpr(cpu.with_cpu_kernels(loss))(variables, x))
    fast = jax.jit(cpu.with_cpu_kernels(jax.value_and_grad(loss, argnums=(0, 1))))(variables, x)
    slow = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))
