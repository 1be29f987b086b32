"""Nonsense data is refused or flagged: one class, empty classes, hidden/system folders, broken links, and a
batch that cannot fit in memory — on real files the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefiles import pattern, write_class_folder, write_image

from jaxnets.cli import main
from jaxnets.data import Loader, PreprocessSpec, from_arrays, load_dataset
from jaxnets.data.sources import folder_kind, image_folder


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_single_class_is_refused_for_training_but_fine_for_evaluating_new_photos(tmp_path, capsys):
    data = write_class_folder(tmp_path / "only_cats", classes=("cat",), per_class=8)
    with pytest.raises(ValueError, match=r"1 class\(es\) \['cat'\].*at least 2"):
        load_dataset(data)
    assert len(load_dataset(data, val_split=0, test_split=0, min_classes=1).train) == 8
    out = tmp_path / "run"
    code = main(["train", "--model", "logistic_regression", "--data", str(data), "--size", "16", "--epochs", "1",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "at least 2" in err[0]
    assert not out.exists()


def test_a_single_class_given_as_arrays_is_refused_by_fit(tmp_path):
    from jaxnets.data.sources import split_dataset
    from jaxnets.train import TrainConfig, fit

    splits = split_dataset(from_arrays(np.zeros((20, 8, 8), np.uint8), np.zeros(20, int)), 0.2, 0.2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit(TrainConfig(model="logistic_regression", size=8, channels=1, epochs=1, out=str(tmp_path / "r"),
                        quiet=True), splits=splits)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content", ["nothing", "only_broken_names"])
def test_a_class_folder_without_images_is_refused_naming_it(tmp_path, content):
    data = write_class_folder(tmp_path / "d", per_class=6)
    empty = data / "zebra"
    empty.mkdir()
    if content == "only_broken_names":
        (empty / "notes.txt").write_text("not an image")
        (empty / "zero.jpg").write_bytes(b"")
    before = _tree(data)
    with pytest.raises(ValueError, match=r"class folder .*zebra holds no image"):
        load_dataset(data)
    assert _tree(data) == before


def test_a_class_whose_every_image_is_unreadable_is_refused_before_training(tmp_path, capsys):
    data = write_class_folder(tmp_path / "d", per_class=10)
    for i in range(6):
        (data / "zebra").mkdir(exist_ok=True)
        (data / "zebra" / f"z{i}.jpg").write_text("text pretending to be a JPEG")
    code = main(["train", "--model", "logistic_regression", "--data", str(data), "--size", "16", "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "['zebra']" in err[-1] and "no readable image in the training split" in err[-1]
    assert not (tmp_path / "run").exists()


def test_hidden_and_system_folders_and_files_are_ignored_silently(tmp_path):
    data = write_class_folder(tmp_path / "d", per_class=5)
    for junk in ("__MACOSX/cat", ".ipynb_checkpoints", ".git/objects", "@eaDir", "$RECYCLE.BIN",
                 "System Volume Information"):
        (data / junk).mkdir(parents=True)
        write_image(data / junk / "x.png", pattern(0))
    for junk in ("cat/._cat_0.png", "cat/.DS_Store", "dog/Thumbs.db", "dog/desktop.ini", ".DS_Store"):
        (data / junk).write_bytes(b"\x00\x05\x16\x07 metadata")
    assert folder_kind(data) == "classes"
    ds = image_folder(data)
    assert ds.classes == ["cat", "dog"] and len(ds) == 10 and ds.skipped == []
    # the same junk beside train/ and test/ folders: still a split layout with two classes
    layout = tmp_path / "layout"
    write_class_folder(layout / "train", per_class=6)
    write_class_folder(layout / "test", per_class=2)
    for junk in ("__MACOSX/train/cat", "train/.ipynb_checkpoints", "test/__pycache__"):
        (layout / junk).mkdir(parents=True)
        write_image(layout / junk / "x.png", pattern(0))
    (layout / "train" / "cat" / "._cat_0.png").write_bytes(b"\x00\x05\x16\x07")
    assert folder_kind(layout) == "splits"
    splits = load_dataset(layout, val_split=0)
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 12 and len(splits.test) == 4
    assert splits.skipped == []


def test_broken_symbolic_links_are_reported_and_good_ones_followed(tmp_path):
    data = write_class_folder(tmp_path / "d", per_class=5)
    outside = write_image(tmp_path / "outside.png", pattern(1))
    (data / "dog" / "linked.png").symlink_to(outside)
    (data / "cat" / "dangling.png").symlink_to(tmp_path / "gone.png")
    loop = data / "cat" / "loop.png"
    loop.symlink_to(loop)
    (data / "ghost_class").symlink_to(tmp_path / "no_such_folder")
    ds = image_folder(data)
    assert ds.classes == ["cat", "dog"] and len(ds) == 11  # 5 + 5 + the good link
    reasons = dict(ds.skipped)
    assert reasons[str(data / "cat" / "dangling.png")].startswith("dangling symbolic link")
    assert reasons[str(loop)] == "symbolic link loop"
    assert reasons[str(data / "ghost_class")].startswith("dangling symbolic link")


def test_a_label_no_file_name_carries_is_refused(tmp_path):
    for i in range(4):
        write_image(tmp_path / "flat" / f"cat.{i}.png", pattern(0))
        write_image(tmp_path / "flat" / f"dog.{i}.png", pattern(1))
    assert load_dataset(tmp_path / "flat", labels=["cat", "dog"]).classes == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"label\(s\) \['fox'\]"):
        load_dataset(tmp_path / "flat", labels=["cat", "dog", "fox"])


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_decoding(tmp_path):
    ds = load_dataset(write_class_folder(tmp_path / "d", per_class=4), val_split=0, test_split=0).train
    with pytest.raises(ValueError, match=r"batch of 64 images of 30000×30000×3 needs about .* GiB"):
        Loader(ds, PreprocessSpec(30000, 30000, 3), batch_size=64)
    big_cache = Loader(ds, PreprocessSpec(64, 64, 3), batch_size=4, memory_budget=1000)
    assert big_cache.streaming and not hasattr(big_cache, "_images")  # streamed: nothing was decoded up front
