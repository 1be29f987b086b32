"""The model card: the typed contract between training and every use of a checkpoint."""

from __future__ import annotations

import json

import pytest

from jaxnets.data.preprocess import PreprocessSpec
from jaxnets.inference.card import CARD_VERSION, ModelCard, read_card, write_card
from jaxnets.integrity import CheckpointError

SPEC = PreprocessSpec(32, 32, 1, "pad", "half")


def _card(**changes) -> ModelCard:
    fields = dict(model="lenet5", model_options={"dtype": "float32"}, classes=("0", "1", "2"), binary=False,
                  preprocess=SPEC, monitor="val_accuracy", best={"epoch": 3, "metric": "val_accuracy", "value": 0.9})
    return ModelCard(**{**fields, **changes})


def test_a_card_round_trips_through_its_one_writer_and_reader(tmp_path):
    card = _card()
    write_card(tmp_path, card)
    back = read_card(tmp_path)
    assert back.replace(versions={}) == card and back.versions["jaxnets"]
    assert back.num_outputs == 3 and back.input_shape == (32, 32, 1) and back.card_version == CARD_VERSION
    on_disk = json.loads((tmp_path / "model_card.json").read_text())
    assert on_disk["num_outputs"] == 3 and on_disk["input_shape"] == [32, 32, 1]


def test_a_card_is_frozen():
    with pytest.raises(AttributeError):
        _card().model = "mlp"


@pytest.mark.parametrize("change, says", [
    ({"binary": True}, "binary model has 2 classes"),
    ({"classes": ("a", "a")}, "classes repeat"),
    ({"classes": ()}, "classes must be non-empty"),
    ({"model": ""}, "model must be a model name"),
    ({"card_version": CARD_VERSION + 1}, "newer than this jaxnets reads"),
])
def test_an_unusable_card_is_refused_when_built(change, says):
    with pytest.raises(CheckpointError, match=says):
        _card(**change)


def _read_edited(tmp_path, edit, says):
    """Write a good card, apply `edit` to its JSON on disk, and read it back: (path, the CheckpointError)."""
    write_card(tmp_path, _card())
    path = tmp_path / "model_card.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=says) as error:
        read_card(tmp_path)
    return path, error


@pytest.mark.parametrize("edit, says", [
    (lambda d: d.pop("classes"), "classes missing"),
    (lambda d: d.update(num_outputs=7), "num_outputs is 7"),
    (lambda d: d.update(input_shape=[28, 28, 1]), "input_shape"),
    (lambda d: d["preprocess"].update(resize="squash"), "resize mode"),
    (lambda d: d.update(card_version=99), "newer"),
    (lambda d: d.update(classes="0123"), "classes must be a list"),
])
def test_a_damaged_card_on_disk_is_refused_naming_the_file_and_the_problem(tmp_path, edit, says):
    path, error = _read_edited(tmp_path, edit, says)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("edit, says", [
    (lambda d: d.update(binary="false"), "binary must be true or false"),
    (lambda d: d.update(monitor="bogus"), "monitor must be one of"),
    (lambda d: d["preprocess"].update(height=32.5), "whole numbers"),
    (lambda d: d.update(packaged_step="x"), "packaged_step"),
    (lambda d: d.update(model_options=[1, 2]), "model_options an object"),
    (lambda d: d.update(best="yes"), "best must be an object"),
])
def test_a_card_with_a_wrong_type_is_refused_once_prefixed(tmp_path, edit, says):
    _, error = _read_edited(tmp_path, edit, says)
    assert str(error.value).count("invalid model card") == 1


def test_a_card_is_frozen_inside_too():
    card = _card(train_config={"optim": {"lr": 0.1}, "labels": ["a"]})
    with pytest.raises(TypeError):
        card.model_options["dtype"] = "bfloat16"
    with pytest.raises(TypeError):
        card.train_config["optim"]["lr"] = 1.0
    assert card.to_dict()["train_config"] == {"optim": {"lr": 0.1}, "labels": ["a"]}


def test_a_card_naming_an_unknown_model_is_refused_naming_the_file(tmp_path):
    from jaxnets.inference import restore_model

    write_card(tmp_path, _card(model="lenet9"))
    with pytest.raises(CheckpointError, match=r"model_card.json: unknown model 'lenet9'"):
        restore_model(tmp_path)
