"""Several processes with JAX's own multi-controller runtime (jax.distributed, gloo on CPU): two `jaxnets train`
processes on 127.0.0.1, one CPU device each, train like one process at the same global batch, write one run
directory, and stop with a clear error (then resume) when one of them is killed."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TRAIN = ["train", "--model", "lenet5", "--data", "digits", "--batch-size", "64", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, *args: str, processes: int = 2, own: list[list[str]] | None = None
           ) -> list[subprocess.Popen]:
    """The processes of one run; `own[i]`: options process i alone gets (after the shared ones: they win)."""
    port = _free_port()
    own = own or [[] for _ in range(processes)]
    return [subprocess.Popen([sys.executable, "-m", "jaxnets", *args, "--out", str(out), "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i), *own[i]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(processes)]


def _wait_for_first_checkpoint(run: Path, procs: list[subprocess.Popen]) -> None:
    """Until the run has saved an epoch (every process still alive), then a moment into the next ones."""
    deadline = time.time() + 240
    while not any(p.name.isdecimal() for p in (run / "checkpoints").glob("*")) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.5)
    time.sleep(2)


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in procs]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


@pytest.mark.slow
def test_two_processes_train_like_one_at_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "jaxnets", *TRAIN, "--epochs", "3", "--out", str(one)],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    results = _finish(_start(two, *TRAIN, "--epochs", "3"))
    assert all(code == 0 for code, _ in results), results
    for a, b in zip(_history(one), _history(two), strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4), (a, b)
    test_one = json.loads((one / "metrics.json").read_text())["test"]
    test_two = json.loads((two / "metrics.json").read_text())["test"]
    n_test = sum(map(sum, test_one["confusion_matrix"]))
    assert abs(test_one["accuracy"] - test_two["accuracy"]) * n_test <= 1 + 1e-9
    # one run directory with the run files and steps one process writes (inside a step, orbax keeps each
    # process's own shards and metadata), each run file recorded once and as written, no temporary left
    names = lambda run: sorted(p.relative_to(run).as_posix() for p in [*run.iterdir(),  # noqa: E731
                                                                        *(run / "checkpoints").iterdir()])
    assert names(two) == names(one)
    from jaxnets import Predictor

    assert Predictor.from_checkpoint(two).step == Predictor.from_checkpoint(one).step  # verified checksums
    recorded = json.loads((two / ".jaxnets-run.json").read_text())["files"]
    for name, digests in recorded.items():
        assert digests == [hashlib.sha256((two / name).read_bytes()).hexdigest()], name


@pytest.mark.slow
def test_killing_one_process_stops_the_other_with_a_clear_error_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    procs = _start(run, *TRAIN, "--epochs", "200")
    _wait_for_first_checkpoint(run, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    code, err = procs[0].wait(timeout=120), procs[0].communicate()[1]
    assert time.time() - killed_at < 60  # no hang: gloo sees the closed connection; the heartbeat backs it up
    procs[1].wait()
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 4 and len(line) == 1 and "lost the others" in line[0] and "--resume" in line[0], err[-2000:]
    done = max(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdecimal())
    results = _finish(_start(run, "train", "--resume", "--epochs", str(done + 1), "--quiet"))
    assert all(c == 0 for c, _ in results), results
    assert [h["epoch"] for h in _history(run)] == list(range(1, done + 2))


@pytest.mark.parametrize("args, says", [
    (["--coordinator", "127.0.0.1:1234"], "go together"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], "not one of the 2"),
    (["--num-processes", "0"], "whole number"),
])
def test_distributed_mistakes_are_one_line(tmp_path, args, says):
    done = subprocess.run([sys.executable, "-m", "jaxnets", *TRAIN, "--epochs", "1", "--out", str(tmp_path / "r"),
                           *args], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("differ, says", [("--seed", "seed"), ("--out", "out"), ("--batch-size", "batch_size")])
def test_processes_started_with_different_options_are_refused_on_every_process(tmp_path, differ, says):
    values = {"--seed": ["1", "2"], "--out": [str(tmp_path / "a"), str(tmp_path / "b")], "--batch-size": ["64", "32"]}
    procs = _start(tmp_path / "run", *TRAIN, "--epochs", "1", own=[[differ, v] for v in values[differ]])
    for code, err in _finish(procs, timeout=120):
        line = [x for x in err.splitlines() if x.startswith("error:")]
        assert code == 2 and len(line) == 1 and "differ in their options" in line[0] and says in line[0], err[-1500:]
    assert not any((tmp_path / name).exists() for name in ("run", "a", "b"))


@pytest.mark.slow
def test_ctrl_c_on_one_process_stops_both(tmp_path):
    run = tmp_path / "run"
    procs = _start(run, *TRAIN, "--epochs", "200")
    _wait_for_first_checkpoint(run, procs)
    procs[1].send_signal(signal.SIGINT)
    sent = time.time()
    codes = [p.wait(timeout=120) for p in procs]
    errors = [p.communicate()[1] for p in procs]
    assert time.time() - sent < 60 and codes == [4, 130], (codes, [e[-800:] for e in errors])
    assert "every process again with --resume" in errors[1]
