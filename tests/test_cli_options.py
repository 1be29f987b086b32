"""One source for every option: `jaxnets train` flags are generated from TrainConfig/OptimConfig and the
model registry, and a resumed run reads its own config back, replacing only the options typed again."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json

import pytest

from jaxnets.cli import _Parser, main
from jaxnets.data.augment import PRESETS
from jaxnets.models import MODEL_OPTIONS, get_entry, list_models
from jaxnets.options import cli_fields, flag
from jaxnets.train.config import TrainConfig
from jaxnets.train.optim import OPTIMIZERS


def _train_parser() -> argparse.ArgumentParser:
    from jaxnets.cli import _add_train

    parser = _Parser(prog="jaxnets")
    _add_train(parser.add_subparsers())
    return parser._subparsers._group_actions[0].choices["train"]


def test_every_config_field_has_its_flag_and_every_flag_its_field():
    actions = {a.option_strings[0]: a for a in _train_parser()._actions if a.option_strings != ["-h", "--help"]}
    fields = {flag(f.name) for f, _ in cli_fields(TrainConfig)}
    model_options = {flag(name) for name in MODEL_OPTIONS}
    placement = {"--coordinator", "--num-processes", "--process-id"}  # where it runs, not what the run is
    assert set(actions) == fields | model_options | placement
    # the fields left out are exactly the two that are not options themselves
    not_flags = {f.name for f in dataclasses.fields(TrainConfig) if flag(f.name) not in actions}
    assert not_flags == {"model_options", "optim"}
    assert actions["--model"].choices == list_models()
    assert actions["--optimizer"].choices == list(OPTIMIZERS)
    assert actions["--augment"].choices == list(PRESETS)


def test_every_model_option_of_the_registry_has_a_flag():
    options = {o for name in list_models() for o in get_entry(name).options()} - {"dtype"}
    assert options == set(MODEL_OPTIONS)


def test_help_states_each_default_once_and_never_none(capsys):
    with contextlib.suppress(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "default: the model's) (default" not in text
    assert "(default: 0.001)" in text and "(default: lenet5)" in text


def test_resume_reads_the_saved_config_and_replaces_only_the_typed_options(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--model", "mlp", "--hidden-sizes", "16", "--data", "digits", "--size", "8", "--channels", "1",
            "--quiet", "--out", out]
    assert main([*base[:-2], "--lr", "0.01", "--batch-size", "32", "--epochs", "2", "--out", out]) == 0
    capsys.readouterr()
    # only --epochs is typed again: lr, batch size, size and hidden sizes come from config.json, not the defaults
    assert main(["train", "--out", out, "--resume", "--epochs", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "epochs: 2 → 3" in err and "lr" not in err.split("epochs: 2 → 3")[1].split("\n")[0]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 3 and saved["optim"]["lr"] == 0.01 and saved["batch_size"] == 32
    assert saved["model"] == "mlp" and saved["model_options"] == {"hidden_sizes": [16]} and saved["size"] == 8
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_a_run_started_with_overwrite_resumes_and_switches_turn_off(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--model", "mlp", "--hidden-sizes", "8", "--data", "digits", "--size", "8", "--channels", "1",
            "--quiet", "--out", out, "--optimizer", "momentum", "--nesterov"]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "1", "--overwrite"]) == 0  # saved with overwrite=true
    capsys.readouterr()
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--no-nesterov"]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["optim"]["nesterov"] is False and saved["overwrite"] is False


@pytest.mark.parametrize("change, says", [
    (["--monitor", "train_loss"], "--monitor"), (["--optimizer", "sgd"], "optimizer state"),
    (["--clip-norm", "1.0"], "optimizer state"), (["--seed", "3"], "seed"), (["--test-split", "0.2"], "test_split"),
    (["--hidden-sizes", "16"], "model_options"),
])
def test_resume_refuses_what_would_change_the_run_before_writing_anything(tmp_path, capsys, change, says):
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--hidden-sizes", "8", "--data", "digits", "--size", "8", "--channels",
                 "1", "--quiet", "--epochs", "1", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = main(["train", "--out", str(out), "--resume", "--epochs", "2", *change])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot resume" in err[0] and says in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
