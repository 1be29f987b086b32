"""`jaxnets bench` runs for real (one tiny step each): a broken import or key would otherwise go unseen."""

from __future__ import annotations

import json

import pytest

from jaxnets.cli import main


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_bench_steps_report_their_figures(capsys, mode):
    assert main(["bench", mode, "--model", "lenet5", "--batch", "4", "--steps", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "lenet5" and result["mode"] == mode and result["batch"] == 4
    assert result["images_per_s"] > 0 and result["ms_per_step"] > 0


def test_bench_refuses_a_zero_batch_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "train", "--model", "lenet5", "--batch", "0"])
    assert stop.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
