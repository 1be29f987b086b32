"""Nonsense folders: one class, empty or broken classes, hidden/system entries, bad symlinks, huge sizes.

Every test builds real files (PIL images, os.symlink links) in tmp_path and checks that reading them changed
nothing on disk."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from imagefiles import pattern, truncated_jpeg, write_class_folder, write_idx, write_image

from jaxnets.data import Loader, PreprocessSpec, image_folder, load_dataset
from jaxnets.data.loader import check_batch_fits
from jaxnets.data.sources import IGNORED_NAMES, NESTED_FOLDER, folder_kind
from jaxnets.inference.evaluate import evaluation_set

SPEC = PreprocessSpec(16, 16, 3)
REPO = Path(__file__).resolve().parents[1]
SYSTEM_FOLDERS = ("__MACOSX", ".ipynb_checkpoints", ".git", ".hidden", "__pycache__", "$RECYCLE.BIN",
                  "System Volume Information", "@eaDir")
SYSTEM_FILES = (".DS_Store", "Thumbs.db", "desktop.ini", "Desktop.ini")


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): its kind and content, to prove reading changed nothing."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "other"
    return out


@pytest.fixture
def unchanged(tmp_path):
    """Yields a function registering roots; after the test, each must be exactly as it was when registered."""
    roots: dict[Path, dict[str, str]] = {}

    def watch(root: Path) -> Path:
        roots[root] = snapshot(root)
        return root

    yield watch
    for root, before in roots.items():
        assert snapshot(root) == before, f"{root} changed on disk"


def add_system_junk(folder: Path) -> None:
    """Everything an OS or tool leaves behind, including tempting image files inside system folders."""
    for name in SYSTEM_FOLDERS:
        write_image(folder / name / "cat_0.png", pattern(0))
    for name in SYSTEM_FILES:
        (folder / name).write_bytes(b"\x00\x01 system junk")
    (folder / "._cat_0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork, not a PNG


# ------------------------------------------------------------------------------------------------ < 2 classes

def _one_class(root: Path, layout: str) -> dict:
    """A training source holding a single class in `layout`; returns load_dataset's keyword arguments."""
    if layout == "classes":
        write_class_folder(root, classes=("cat",), per_class=6)
        add_system_junk(root)
    elif layout == "splits":
        write_class_folder(root / "train", classes=("cat",), per_class=6)
        write_class_folder(root / "test", classes=("cat",), per_class=2)
    elif layout == "flat":
        for i in range(6):
            write_image(root / f"cat.{i}.jpg", pattern(0))
        add_system_junk(root)
    elif layout == "flat_labels":
        for i in range(6):
            write_image(root / f"cat.{i}.jpg", pattern(0))
        return {"labels": ["cat"]}
    else:
        write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((6, 28, 28), np.uint8))
        write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    return {}


@pytest.mark.parametrize("layout", ["classes", "splits", "flat", "flat_labels", "idx"])
def test_training_data_with_one_class_is_refused(tmp_path, unchanged, layout):
    kwargs = _one_class(tmp_path, layout)
    unchanged(tmp_path)
    with pytest.raises(ValueError, match="at least 2 classes, found 1") as e:
        load_dataset(tmp_path, **kwargs)
    assert str(tmp_path) in str(e.value)


def test_evaluation_on_a_folder_with_only_some_classes_still_works(tmp_path, unchanged):
    write_class_folder(tmp_path / "new", classes=("cat",), per_class=3)
    for i in range(3):
        write_image(tmp_path / "flat" / f"cat.{i}.png", pattern(0))
    unchanged(tmp_path)
    assert image_folder(tmp_path / "new").classes == ["cat"]
    ds, what = evaluation_set(str(tmp_path / "new"), ["cat", "dog"])
    assert what == "data the run never saw"
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0]
    assert load_dataset(tmp_path / "flat", val_split=0, test_split=0.5, for_training=False).classes == ["cat"]


# ------------------------------------------------------------------------------------------------ empty classes

def _fill_dog(dog: Path, content: str) -> None:
    """A class folder that holds no readable image, in one of several ways."""
    dog.mkdir(parents=True, exist_ok=True)
    if content == "text_as_jpg":
        (dog / "dog_0.jpg").write_text("not a picture")
        (dog / "dog_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif content == "truncated":
        truncated_jpeg(dog / "dog_0.jpg")
    elif content == "not_images":
        (dog / "notes.txt").write_text("x")
        (dog / "empty.jpg").write_bytes(b"")
    elif content == "hidden_only":
        (dog / "._dog_0.jpg").write_bytes(b"\x00\x05\x16\x07")
        (dog / ".DS_Store").write_bytes(b"\x00")
        (dog / "Thumbs.db").write_bytes(b"\x00")
        write_image(dog / ".ipynb_checkpoints" / "dog_0-checkpoint.png", pattern(1))
    elif content == "dangling_link":
        os.symlink(dog / "gone.jpg", dog / "dog_0.jpg")


CONTENTS = ["empty", "text_as_jpg", "truncated", "not_images", "hidden_only", "dangling_link"]


@pytest.mark.parametrize("content", CONTENTS)
def test_class_folder_without_a_readable_image_is_refused_naming_it(tmp_path, unchanged, content):
    write_class_folder(tmp_path, classes=("cat",), per_class=4)
    _fill_dog(tmp_path / "dog", content)
    unchanged(tmp_path)
    with pytest.raises(ValueError, match=r"has no (readable )?image") as e:
        load_dataset(tmp_path)
    assert f"class folder {tmp_path / 'dog'} " in str(e.value)
    with pytest.raises(ValueError, match=r"has no (readable )?image"):  # evaluating on it is refused as well
        image_folder(tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_folders_class_without_images_is_refused_naming_it(tmp_path, unchanged, split):
    write_class_folder(tmp_path / "train", per_class=4)
    write_class_folder(tmp_path / "test", per_class=2)
    for p in (tmp_path / split / "dog").iterdir():
        p.unlink()
    (tmp_path / split / "dog" / "Thumbs.db").write_bytes(b"\x00")
    unchanged(tmp_path)
    with pytest.raises(ValueError, match="has no image file") as e:
        load_dataset(tmp_path)
    assert f"class folder {tmp_path / split / 'dog'} " in str(e.value)


def test_flat_folder_label_matching_no_file_is_refused(tmp_path, unchanged):
    for i in range(3):
        write_image(tmp_path / f"cat.{i}.jpg", pattern(0))
    unchanged(tmp_path)
    with pytest.raises(ValueError, match=r"label 'dog' in .* has no image file") as e:
        load_dataset(tmp_path, labels=["cat", "dog"])
    assert str(tmp_path) in str(e.value)


def test_flat_folder_label_with_only_broken_files_is_refused_naming_them(tmp_path, unchanged):
    for i in range(3):
        write_image(tmp_path / f"cat.{i}.jpg", pattern(0))
    (tmp_path / "dog.1.jpg").write_text("not a picture")
    unchanged(tmp_path)
    with pytest.raises(ValueError, match=r"label 'dog' in .* has no readable image.*dog\.1\.jpg"):
        load_dataset(tmp_path, labels=["cat", "dog"])


def test_class_left_without_training_examples_by_the_carve_is_refused(tmp_path, unchanged):
    write_class_folder(tmp_path, classes=("cat",), per_class=10)
    write_class_folder(tmp_path, classes=("dog",), per_class=2)
    unchanged(tmp_path)
    with pytest.raises(ValueError, match=r"\['dog'\] have no training example"):
        load_dataset(tmp_path, val_split=0.4, test_split=0.4)


# ------------------------------------------------------------------------------------------------ hidden/system

def test_ignored_names_constant_covers_the_system_names():
    for name in SYSTEM_FOLDERS + SYSTEM_FILES:
        assert name.startswith(".") or name.casefold() in IGNORED_NAMES, name


def test_hidden_and_system_entries_are_ignored_in_class_folders(tmp_path, unchanged, caplog):
    write_class_folder(tmp_path, per_class=3)
    add_system_junk(tmp_path)
    add_system_junk(tmp_path / "cat")
    unchanged(tmp_path)
    assert folder_kind(tmp_path) == "classes"
    splits = load_dataset(tmp_path, val_split=0, test_split=0)
    assert splits.classes == ["cat", "dog"]
    assert [Path(s).name for s in splits.train.sources] == [f"cat_{i}.png" for i in range(3)] + [
        f"dog_{i}.png" for i in range(3)]
    assert splits.skipped == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_hidden_and_system_entries_are_ignored_in_a_flat_folder(tmp_path, unchanged):
    for i in range(3):
        write_image(tmp_path / f"cat.{i}.jpg", pattern(0))
        write_image(tmp_path / f"dog.{i}.png", pattern(1))
    add_system_junk(tmp_path)
    unchanged(tmp_path)
    assert folder_kind(tmp_path) == "flat"  # __MACOSX/ and friends are not class folders
    splits = load_dataset(tmp_path, val_split=0, test_split=0)
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 6 and splits.skipped == []


def test_hidden_and_system_entries_are_ignored_in_split_folders(tmp_path, unchanged):
    write_class_folder(tmp_path / "train", per_class=3)
    write_class_folder(tmp_path / "test", per_class=2)
    write_class_folder(tmp_path / ".val", classes=("fox",), per_class=1)  # hidden: not a split folder
    for folder in (tmp_path, tmp_path / "train", tmp_path / "test", tmp_path / "train" / "dog"):
        add_system_junk(folder)
    unchanged(tmp_path)
    assert folder_kind(tmp_path) == "splits"
    splits = load_dataset(tmp_path, val_split=0)
    assert splits.classes == ["cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 0, 4)
    assert splits.skipped == []


def test_a_plain_folder_inside_a_class_folder_is_reported_not_read(tmp_path, unchanged):
    write_class_folder(tmp_path, per_class=2)
    write_image(tmp_path / "cat" / "kittens" / "kitten_0.png", pattern(0))
    unchanged(tmp_path)
    splits = load_dataset(tmp_path, val_split=0, test_split=0)
    assert len(splits.train) == 4
    assert splits.skipped == [(str(tmp_path / "cat" / "kittens"), NESTED_FOLDER)]


# ------------------------------------------------------------------------------------------------ symlinks

def test_bad_symlinks_are_skipped_with_a_reason_and_good_ones_followed(tmp_path, unchanged):
    root = tmp_path / "data"
    write_class_folder(root, per_class=2)
    outside = write_image(tmp_path / "elsewhere" / "photo.jpg", pattern(0))
    cat = root / "cat"
    os.symlink(outside, cat / "linked.jpg")                 # a link to a real image outside: followed
    os.symlink(tmp_path / "missing.jpg", cat / "dangling.jpg")
    os.symlink("self.jpg", cat / "self.jpg")                # a link to itself
    os.symlink("loop_b.jpg", cat / "loop_a.jpg")            # two links pointing at each other
    os.symlink("loop_a.jpg", cat / "loop_b.jpg")
    os.symlink("..", cat / "up")                            # folder cycles, inside a class and at the top
    os.symlink(".", cat / "here")
    os.symlink(".", root / "again")
    unchanged(tmp_path)
    splits = load_dataset(root, val_split=0, test_split=0)
    assert splits.classes == ["cat", "dog"]
    cats = [Path(s).name for s, y in zip(splits.train.sources, splits.train.labels, strict=True) if y == 0]
    assert cats == ["cat_0.png", "cat_1.png", "linked.jpg"]
    real = root.resolve()
    loops = "a folder that contains it: not followed (it would loop)"
    assert sorted(splits.skipped) == sorted([
        (str(root / "again"), f"symbolic link to {real}, {loops}"),
        (str(cat / "dangling.jpg"), f"broken symbolic link: its target {tmp_path / 'missing.jpg'} does not exist"),
        (str(cat / "here"), f"symbolic link to {real / 'cat'}, {loops}"),
        (str(cat / "loop_a.jpg"), "symbolic link loop (loop_a.jpg -> loop_b.jpg)"),
        (str(cat / "loop_b.jpg"), "symbolic link loop (loop_b.jpg -> loop_a.jpg)"),
        (str(cat / "self.jpg"), "symbolic link loop (self.jpg -> self.jpg)"),
        (str(cat / "up"), f"symbolic link to {real}, {loops}"),
    ])
    loader = Loader(splits.train, SPEC, batch_size=4)
    assert len(loader) == 5 and sum(int(b["mask"].sum()) for b in loader.epoch(0)) == 5


def test_linked_class_folder_is_followed_and_link_loops_do_not_make_a_flat_folder_a_class_folder(tmp_path,
                                                                                                 unchanged):
    write_class_folder(tmp_path / "store", classes=("dog",), per_class=2)
    root = tmp_path / "data"
    write_class_folder(root, classes=("cat",), per_class=2)
    os.symlink(tmp_path / "store" / "dog", root / "dog")
    flat = tmp_path / "flat"
    for i in range(2):
        write_image(flat / f"cat.{i}.png", pattern(0))
        write_image(flat / f"dog.{i}.png", pattern(1))
    os.symlink(".", flat / "loop")
    os.symlink("nowhere", flat / "dangling.png")
    unchanged(tmp_path)
    assert load_dataset(root, val_split=0, test_split=0).classes == ["cat", "dog"]
    assert folder_kind(flat) == "flat"
    splits = load_dataset(flat, val_split=0, test_split=0)
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 4
    assert [p for p, _ in splits.skipped] == [str(flat / "dangling.png"), str(flat / "loop")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX-only")
def test_a_named_pipe_is_skipped_not_read(tmp_path, unchanged):
    write_class_folder(tmp_path, per_class=2)
    os.mkfifo(tmp_path / "cat" / "pipe.jpg")  # opening it for reading would block forever
    unchanged(tmp_path)
    splits = load_dataset(tmp_path, val_split=0, test_split=0)
    assert splits.skipped == [(str(tmp_path / "cat" / "pipe.jpg"), "not a regular file")]
    assert len(splits.train) == 4


# ------------------------------------------------------------------------------------------------ memory

def test_a_batch_too_big_for_memory_is_refused_before_anything_is_allocated(tmp_path, unchanged):
    write_class_folder(tmp_path, per_class=2)
    unchanged(tmp_path)
    ds = load_dataset(tmp_path, val_split=0, test_split=0).train
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"size 30000×30000×3 with batch size 64 needs about .* GiB") as e:
        Loader(ds, PreprocessSpec(30000, 30000, 3), batch_size=64)
    assert time.perf_counter() - t0 < 5
    assert "of memory is available" in str(e.value)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 512 * 1024, "the refusal allocated memory"
    assert ds.skipped == []  # nothing was decoded


def test_batch_memory_arithmetic():
    spec = PreprocessSpec(100, 100, 3)
    needed = 10 * 100 * 100 * 3 * (1 + 4) * 2  # uint8 host + float32 device, ×2 in flight
    check_batch_fits(spec, 10, available=needed)
    check_batch_fits(spec, 10, available=None)  # unknown memory: no refusal
    with pytest.raises(ValueError, match=r"size 100×100×3 with batch size 10 .* but only 0\.0 GiB"):
        check_batch_fits(spec, 10, available=needed - 1)


def test_streaming_is_decided_from_sizes_before_decoding(tmp_path):
    write_class_folder(tmp_path, per_class=3)
    ds = load_dataset(tmp_path, val_split=0, test_split=0).train
    ds.sources[0].write_bytes(b"broken after the scan")  # decoding it would record a skip
    cache = 6 * 16 * 16 * 3
    streaming = Loader(ds, SPEC, batch_size=2, memory_budget=cache - 1)
    assert streaming.streaming and streaming.cache_bytes == cache and ds.skipped == []
    cached = Loader(ds, SPEC, batch_size=2, memory_budget=cache)
    assert not cached.streaming and [p for p, _ in ds.skipped] == [str(ds.sources[0])]


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_refuses_a_single_class_folder_in_one_line(tmp_path, unchanged):
    data = write_class_folder(tmp_path / "data", classes=("cat",), per_class=4)
    unchanged(data)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxnets", "train", "--model", "logistic_regression", "--data", str(data),
         "--epochs", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "at least 2 classes" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # needs jaxnets/train/loop.py to load the data before it creates --out and writes config.json there
    assert not out.exists(), "train created --out before refusing the data"


# ------------------------------------------------------------------------------------------------ fit's own checks

def test_fit_refuses_one_class_given_as_arrays_and_writes_nothing(tmp_path):
    from jaxnets.data import from_arrays
    from jaxnets.data.sources import split_dataset
    from jaxnets.train import TrainConfig, fit

    splits = split_dataset(from_arrays(np.zeros((20, 8, 8), np.uint8), np.zeros(20, int)), 0.2, 0.2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit(TrainConfig(model="logistic_regression", size=8, channels=1, epochs=1, out=str(tmp_path / "r"),
                        quiet=True), splits=splits)
    assert not (tmp_path / "r").exists()


def test_fit_refuses_a_class_whose_training_images_all_fail_to_decode(tmp_path):
    """Splits given in memory skip the folder checks: the decoded training split is checked once more."""
    from jaxnets.data import Dataset, Splits
    from jaxnets.train import TrainConfig, fit

    good = [write_image(tmp_path / "img" / f"cat{i}.png", pattern(0)) for i in range(4)]
    broken = []
    for i in range(4):
        broken.append(tmp_path / "img" / f"dog{i}.jpg")
        broken[-1].write_text("text pretending to be a JPEG")
    dogs = [write_image(tmp_path / "img" / f"dog_ok{i}.png", pattern(1)) for i in range(2)]
    train = Dataset(["cat", "dog"], good + broken, [0] * 4 + [1] * 4)
    val = Dataset(["cat", "dog"], dogs, [1, 1])
    with pytest.raises(ValueError, match=r"\['dog'\] have no readable image in the training split"):
        fit(TrainConfig(model="logistic_regression", size=8, epochs=1, out=str(tmp_path / "r"), quiet=True),
            splits=Splits(train, val, Dataset(["cat", "dog"], [], [])))
    assert not (tmp_path / "r").exists()
