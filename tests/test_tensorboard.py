"""TensorBoard: a run leaves event files that hold each scalar for each epoch and the confusion matrix image,
read back here with nothing but the TFRecord framing and tensorboardX's own protobuf."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

from jaxnets.train import TrainConfig, fit


def read_events(logdir: Path) -> tuple[dict[str, dict[int, float]], set[str]]:
    """({scalar tag: {step: value}}, image tags) of every event file in `logdir`."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    images: set[str] = set()
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    images.add(value.tag)
                else:
                    scalars[value.tag][event.step] = value.simple_value
    return dict(scalars), images


def test_every_scalar_is_logged_for_every_epoch_and_the_confusion_matrix_at_the_end(tmp_path):
    result = fit(TrainConfig(model="logistic_regression", data="digits", size=8, channels=1, epochs=3,
                             out=str(tmp_path / "run"), quiet=True))
    (logdir,) = (tmp_path / "run" / "tensorboard").iterdir()  # this start's folder
    scalars, images = read_events(logdir)
    for key, tag in (("train_loss", "loss/train"), ("val_loss", "loss/validation"),
                     ("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/validation"),
                     ("lr", "learning_rate"), ("images_per_s", "images_per_s")):
        assert sorted(scalars[tag]) == [1, 2, 3], tag
        for row in result.history:
            assert abs(scalars[tag][row["epoch"]] - row[key]) <= 1e-6 * max(1.0, abs(row[key])), (tag, row)
    assert images == {"test/confusion_matrix"}


def test_a_resume_goes_on_in_its_start_folder_and_an_overwrite_starts_a_new_one(tmp_path):
    common = dict(model="logistic_regression", data="digits", size=8, channels=1, out=str(tmp_path / "run"),
                  quiet=True)
    fit(TrainConfig(epochs=1, **common))
    fit(TrainConfig(epochs=2, resume=True, **common))
    (first,) = (tmp_path / "run" / "tensorboard").iterdir()
    assert sorted(read_events(first)[0]["loss/train"]) == [1, 2]
    import time

    time.sleep(1.1)  # start folders are named by the second
    fit(TrainConfig(epochs=1, overwrite=True, **common))
    starts = sorted((tmp_path / "run" / "tensorboard").iterdir())
    assert len(starts) == 2 and starts[0] == first and sorted(read_events(starts[1])[0]["loss/train"]) == [1]


def test_no_tensorboard_writes_no_events(tmp_path):
    fit(TrainConfig(model="logistic_regression", data="digits", size=8, channels=1, epochs=1,
                    out=str(tmp_path / "run"), quiet=True, tensorboard=False))
    assert not (tmp_path / "run" / "tensorboard").exists()
