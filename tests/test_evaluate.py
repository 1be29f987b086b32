"""jaxnets evaluate: on the run's own data exactly its recorded test split; on data it never saw, all of it."""

from __future__ import annotations

import json
import shutil

import pytest
from imagefiles import pattern, write_class_folder, write_image

from jaxnets.cli import main


def _evaluate(capsys, run, data) -> tuple[int, dict | list[str]]:
    code = main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err.strip().splitlines())


def test_evaluate_on_the_training_folder_scores_exactly_the_runs_test_split(tmp_path, capsys):
    data = write_class_folder(tmp_path / "photos", classes=("cat", "dog", "fox"), per_class=20)
    run = tmp_path / "run"
    # uneven fractions and a seed of its own: a re-split with the defaults would pick other images
    assert main(["train", "--model", "logistic_regression", "--data", str(data), "--size", "16", "--epochs", "2",
                 "--batch-size", "8", "--val-split", "0.2", "--test-split", "0.3", "--seed", "7", "--quiet",
                 "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "split.json").read_text())
    assert record["test"]["images"] == 18 and len(record["test"]["files"]) == 18
    capsys.readouterr()
    code, result = _evaluate(capsys, run, data)
    assert code == 0, result
    assert result["scored"] == "the run's test split" and result["images"] == 18
    assert result["accuracy"] == metrics["test"]["accuracy"]
    assert result["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)  # other batch size, other sum order
    assert result["confusion_matrix"] == metrics["test"]["confusion_matrix"]

    # the same photos copied elsewhere are still the run's data: its test split, not all 60 (40 were trained on)
    copy = shutil.copytree(data, tmp_path / "elsewhere")
    code, result = _evaluate(capsys, run, copy)
    assert code == 0 and result["scored"] == "the run's test split" and result["images"] == 18
    assert result["accuracy"] == metrics["test"]["accuracy"]

    # other photos of the same classes (here: re-encoded, so other files): never seen, all of them are scored
    other = write_class_folder(tmp_path / "other", classes=("cat", "dog", "fox"), per_class=7, size=18)
    code, result = _evaluate(capsys, run, other)
    assert code == 0 and result["scored"] == "data the run never saw" and result["images"] == 21

    # a damaged split record is one line, not a traceback
    (run / "split.json").write_text('{"version": 1}')
    code, err = _evaluate(capsys, run, data)
    assert code == 2 and len(err) == 1 and "split.json is damaged" in err[0]
    (run / "split.json").write_text(json.dumps(record))

    # the training folder changed: its test split cannot be replayed, and is not silently re-split
    write_image(data / "dog" / "dog_new.png", pattern(1, 16))
    code, err = _evaluate(capsys, run, data)
    assert code == 2 and len(err) == 1 and "changed since the run was trained" in err[0]
