"""The CLI against hostile input: two `jaxnets train` runs into one --out, and weight files for `jaxnets convert`
that carry code (pickle). Each is one line and exit 2, nothing of the other run lost, no code run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _jaxnets(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxnets", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, **kwargs)


def _one_line_refusal(proc: subprocess.Popen, word: str, timeout: float = 300, only: bool = True) -> str:
    """Exit 2, no traceback, one `error:` line naming `word` (and nothing else on stderr when `only`)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, (proc.returncode, out[-1000:], err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [x for x in err.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and word in errors[0], lines
    assert not only or lines == errors, lines
    return errors[0]


TRAIN = ("train", "--model", "lenet5", "--data", "digits", "--batch-size", "64")


def test_a_second_run_into_a_busy_out_is_refused_and_the_first_is_intact(tmp_path):
    out = tmp_path / "run"
    first = _jaxnets(*TRAIN, "--epochs", "4", "--out", str(out))
    deadline = time.monotonic() + 240
    while not (out / ".jaxnets-run.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.2)
    for extra in ((), ("--overwrite",), ("--resume",)):
        second = _jaxnets(*TRAIN, "--epochs", "1", "--out", str(out), *extra)
        _one_line_refusal(second, "another jaxnets run")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    check = _jaxnets("evaluate", "--checkpoint", str(out), "--data", "digits")
    assert check.wait(timeout=300) == 0, check.communicate()[1][-2000:]


def test_two_runs_started_together_one_wins_one_line_for_the_other(tmp_path):
    out = tmp_path / "run"
    runs = [_jaxnets(*TRAIN, "--epochs", "2", "--out", str(out)) for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in runs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-1500:]) for p, _, err in results]
    loser = next(err for p, _, err in results if p.returncode == 2)
    assert "Traceback" not in loser and "another jaxnets run" in loser, loser[-2000:]
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


class _Evil:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    import torch

    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"conv1.weight": _Evil(marker)}))
    zipped = tmp_path / "zipped.pth"
    torch.save({"conv1.weight": torch.zeros(6, 1, 5, 5), "hook": _Evil(marker)}, zipped)  # torch's own zip format
    header = tmp_path / "header.safetensors"
    header.write_bytes((2**40).to_bytes(8, "little") + b"{}")  # a header length of a terabyte
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((20).to_bytes(8, "little") + b'{"x": {"dtype": 1}}  ')
    return {"plain": plain, "zipped": zipped, "header": header, "garbage": garbage}


def test_convert_never_runs_code_from_a_weights_file(tmp_path):
    pytest.importorskip("torch")
    marker = tmp_path / "marker"
    for name, path in _evil_files(tmp_path, marker).items():
        proc = _jaxnets("convert", "--from", str(path), "--model", "lenet5", "--out", str(tmp_path / f"out_{name}"))
        line = _one_line_refusal(proc, str(path))  # one line and nothing else on stderr (no torch warning)
        assert not marker.exists(), (name, line)
        assert not (tmp_path / f"out_{name}").exists() or not any((tmp_path / f"out_{name}").iterdir()), name


def test_convert_of_a_pickle_is_exactly_one_line(tmp_path):
    pytest.importorskip("torch")
    path = _evil_files(tmp_path, tmp_path / "marker")["plain"]
    _one_line_refusal(_jaxnets("convert", "--from", str(path), "--model", "lenet5", "--out", str(tmp_path / "o")),
                      str(path))
