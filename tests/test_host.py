"""jaxnets is a guest in the process that embeds it (issue 33): importing it, building a Predictor, predicting,
exporting, evaluating and building a train step leave glibc's malloc, the environment, the signal handlers and
matplotlib's backend as they were. Only `jaxnets.runtime.tune_process()`, the one documented call, tunes malloc.

malloc is observed from outside jaxnets' own flags: glibc's `malloc_info` lists one `<heap>` per arena, and threads
that allocate get arenas of their own unless M_ARENA_MAX was forced to 1 (what the tuning does)."""

import json
import os
import subprocess
import sys

import pytest

_PROBE = r"""
import ctypes, json, logging, os, signal, sys, tempfile, threading, warnings
import numpy as np, jax, jax.numpy as jnp, flax, optax, matplotlib  # the third-party packages, as a host has them
import orbax.checkpoint  # noqa: F401 - its import adds a root logging handler (absl): orbax's doing, not jaxnets'

mode = sys.argv[1]
snapshot = lambda: {
    "environ": dict(os.environ), "signals": {int(s): repr(signal.getsignal(s)) for s in signal.valid_signals()
                                             if signal.getsignal(s) is not None},
    "backend": repr(dict.__getitem__(matplotlib.rcParams, "backend")), "pyplot": "matplotlib.pyplot" in sys.modules,
    "affinity": sorted(os.sched_getaffinity(0)), "switch": sys.getswitchinterval(),
    "logging": [repr(h) for h in logging.root.handlers] + [logging.root.level],
}
before = snapshot()
libc = ctypes.CDLL(None)
if mode == "forced":  # the control: one arena, set by hand
    libc.mallopt(-8, 1)
if mode == "command":  # the jaxnets command owns its process: it tunes it (here a run that stops at a bad file)
    from jaxnets.cli import run
    sys.argv = ["jaxnets", "convert", "--from", "/nonexistent/w.pth", "--model", "lenet5", "--out", "/nonexistent/o"]
    assert run() == 2
if mode in ("jaxnets", "tuned"):
    import jaxnets
    from jaxnets import runtime
    if mode == "tuned":
        runtime.tune_process()  # the one documented call
    from jaxnets import Predictor, create_model
    from jaxnets.data.preprocess import PreprocessSpec
    from jaxnets.inference import export, scoring
    from jaxnets.inference.card import ModelCard
    from jaxnets.models import init_variables
    from jaxnets.report import figures
    from jaxnets.train import OptimConfig, StepConfig, create_state, make_optimizer
    from jaxnets.train.steps import make_train_step
    import jaxnets.cli, jaxnets.inference.evaluate, jaxnets.pretrained  # noqa: F401 - imported, nothing more

    spec = PreprocessSpec(32, 32, 1)
    card = ModelCard(model="lenet5", model_options={}, classes=tuple("0123"), binary=False, preprocess=spec)
    model = create_model("lenet5", 4)
    predictor = Predictor(model, init_variables(model, spec.shape, 0), card, buckets=(4,))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), np.uint8)
    assert predictor.predict_pixels(pixels).shape == (4, 4)
    export.export_bytes(predictor, "stablehlo", platforms=("cpu",))
    batch = {"image": jnp.asarray(pixels), "label": jnp.arange(4), "mask": jnp.ones(4, bool)}
    scoring.score(scoring.make_eval_step(model, spec, 4, False), predictor.variables, [batch])
    tx, _ = make_optimizer(OptimConfig(optimizer="sgd", lr=0.1), 2, 1)
    _, state = create_state("lenet5", 4, {}, spec.shape, tx, 0)
    jax.block_until_ready(make_train_step(model, tx, StepConfig(spec, 4, False))(state, batch))
    figures.figure_png(figures.confusion_figure(np.eye(4, dtype=int), list("abcd")))
    figures.figure_png(figures.pyplot().subplots(1, 2, figsize=(2, 1), dpi=40)[0])
    jax.block_until_ready(runtime.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((256, 256))))

start, stop = threading.Barrier(5), threading.Barrier(5)
def allocate():  # a thread's first malloc binds it to an arena: its own, where glibc may make one
    start.wait()
    held = [bytearray(200_000) for _ in range(20)]
    stop.wait()
threads = [threading.Thread(target=allocate) for _ in range(4)]
[t.start() for t in threads]
start.wait()
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    stop.wait()
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    arenas = open(out.name).read().count("<heap nr=")
[t.join() for t in threads]
after = snapshot()
print(json.dumps({"arenas": arenas, "changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]}}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JAXNETS_CPU_MALLOC")}
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes() -> dict:
    if not sys.platform.startswith("linux"):
        pytest.skip("malloc_info is glibc's")
    try:
        import ctypes

        ctypes.CDLL(None).malloc_info  # noqa: B018 - musl has none
    except AttributeError:
        pytest.skip("not glibc")
    return {mode: _probe(mode) for mode in ("plain", "forced", "jaxnets", "tuned", "command")}


def test_the_probe_sees_arenas_and_a_forced_single_arena(probes):
    assert probes["plain"]["arenas"] > 1, probes["plain"]
    assert probes["forced"]["arenas"] == 1, probes["forced"]


def test_importing_predicting_exporting_and_training_leave_malloc_alone(probes):
    # were jaxnets to set M_ARENA_MAX=1 (as runtime/cpu.py once did on import), this would be 1
    assert probes["jaxnets"]["arenas"] > 1, probes["jaxnets"]


def test_importing_and_predicting_change_no_environment_signal_handler_or_matplotlib_backend(probes):
    assert probes["plain"]["changed"] == {}, probes["plain"]["changed"]
    assert probes["jaxnets"]["changed"] == {}, probes["jaxnets"]["changed"]


def test_tune_process_is_the_one_call_that_shares_the_main_heap(probes):
    from jaxnets.runtime import host

    if host._cpu_process():  # on an accelerator machine the CPU tuning stays off
        assert probes["tuned"]["arenas"] == 1, probes["tuned"]
    assert probes["tuned"]["changed"] == {}, probes["tuned"]["changed"]


def test_the_jaxnets_command_tunes_its_own_process(probes):
    """The console script's entry (cli.run, also `python -m jaxnets`) calls tune_process(): were the call dropped,
    the command's threads would get arenas of their own."""
    from jaxnets.runtime import host

    if host._cpu_process():  # on an accelerator machine the CPU tuning stays off
        assert probes["command"]["arenas"] == 1, probes["command"]
