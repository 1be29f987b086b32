"""Where examples come from: folders (folders.py), MNIST IDX files, the embedded digits, arrays and TFDS, and
`load_dataset(spec)`, the single entry point the CLI uses; it returns the train/val/test `Splits`.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..extras import require
from .dataset import Dataset, Splits, split_dataset, stratified_split
from .folders import (  # noqa: F401  (re-exported)
    IGNORED_NAMES,
    IMAGE_EXTENSIONS,
    NESTED_FOLDER,
    image_folder,
    is_ignored,
    labelled_by_filename,
    list_folder,
    report_skipped,
)

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


# ---------------------------------------------------------------------------------------------- IDX/MNIST

def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or raw, as a numpy array."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {arr.size} values")
    return arr.reshape(shape).astype(arr.dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def is_idx_folder(root: Path) -> bool:
    return _find_idx(root, "train-images-idx3-ubyte") is not None


def idx_folder(root: str | Path, classes: Sequence[str] | None = None) -> tuple[Dataset, Dataset | None]:
    """MNIST-style folder → (train, test). Class names default to the digits 0-9 (Fashion-MNIST: pass them)."""
    root = Path(root)
    out = []
    for prefix in ("train", "t10k"):
        img_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        lab_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lab_path is None:
            out.append(None)
            continue
        images, labels = read_idx(img_path).astype(np.uint8), read_idx(lab_path).astype(np.int32)
        names = list(classes) if classes else [str(i) for i in range(int(labels.max()) + 1)]
        out.append(Dataset(names, images, labels, name=f"{root.name}/{prefix}"))
    if out[0] is None:
        raise ValueError(f"{root}: no train-images-idx3-ubyte(.gz) / train-labels-idx1-ubyte(.gz) pair")
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- digits, arrays

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")  # scikit-learn's file, BSD: DIGITS_LICENSE.txt


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 1797×8×8 in 0..16, labels int64): what `sklearn.datasets.load_digits()` returns as
    `.images` and `.target`, read from the same file, embedded (no scikit-learn needed)."""
    with gzip.open(DIGITS_FILE, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def digits() -> Dataset:
    """The 1,797 real 8×8 handwritten digits scikit-learn ships: the embedded default, no download."""
    images, labels = digits_arrays()
    images = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Dataset([str(i) for i in range(10)], images, labels, name="digits")


def from_arrays(images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None) -> Dataset:
    """Your own numpy images (N×H×W or N×H×W×C, uint8 or [0, 1] floats) and integer labels."""
    labels = np.asarray(labels)
    classes = list(classes) if classes is not None else [str(i) for i in range(int(labels.max()) + 1)]
    return Dataset(classes, np.asarray(images), labels, name="arrays")


# ---------------------------------------------------------------------------------------------- TFDS

def tfds_splits(name: str, data_dir: str | None = None) -> dict[str, Dataset]:
    """A prepared TFDS dataset: through `tfds.data_source` (array_record, no TensorFlow needed), or
    `tfds.load` when TensorFlow is importable. Raises one clear error saying how to prepare it (MissingExtra
    naming `pip install 'jaxnets[tfds]'` without tensorflow-datasets)."""
    tfds = require("tfds", "tensorflow_datasets")

    hint = (
        f"TFDS dataset {name!r} is not prepared{f' in {data_dir}' if data_dir else ''}. Prepare it once where "
        f"the network is reachable: `tfds build {name} --file_format=array_record"
        f"{f' --data_dir {data_dir}' if data_dir else ''}` (or python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}').download_and_prepare(file_format='array_record')\"), then pass --data-dir."
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        info = builder.info
        if not builder.is_prepared():
            raise FileNotFoundError(hint)
        label_feature = info.features["label"]
        classes = list(getattr(label_feature, "names", None) or map(str, range(label_feature.num_classes)))
        out = {}
        if builder.info.file_format.value == "array_record":
            sources = tfds.data_source(name, data_dir=data_dir)
            for split, src in sources.items():
                images = np.stack([np.asarray(ex["image"], np.uint8) for ex in src]) if len(src) else None
                labels = np.asarray([int(ex["label"]) for ex in src], np.int32)
                out[split] = _from_examples(classes, images, labels, f"{name}/{split}")
        else:
            import tensorflow  # noqa: F401  (tfrecord files need TensorFlow)

            for split in info.splits:
                ds = tfds.as_numpy(builder.as_dataset(split=split))
                images, labels = zip(*((ex["image"], int(ex["label"])) for ex in ds), strict=True)
                out[split] = _from_examples(classes, list(images), np.asarray(labels), f"{name}/{split}")
        return out
    except FileNotFoundError:
        raise
    except ImportError as e:
        raise FileNotFoundError(f"{hint} ({e}: install tensorflow to read tfrecord-format datasets)") from None
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, AssertionError, …) for one meaning
        raise FileNotFoundError(f"{hint} ({type(e).__name__}: {e})") from None


def _from_examples(classes, images, labels, name) -> Dataset:
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return Dataset(classes, images if images is not None else np.zeros((0, 1, 1), np.uint8), labels, name=name)


# ---------------------------------------------------------------------------------------------- entry point

def _split_folders(root: Path) -> dict[str, Path]:
    """train/ val|validation|valid/ test/ folders (any case), or {} when there is no train folder."""
    found = {}
    for p in list_folder(root).folders:
        if p.name.lower() in SPLIT_NAMES:
            found[SPLIT_NAMES[p.name.lower()]] = p
    return found if "train" in found else {}


def _carve(train: Dataset, val: Dataset | None, test: Dataset | None, val_split: float, test_split: float,
           seed: int) -> Splits:
    """Fill the splits a source does not provide by stratified sampling from its train part."""
    fractions = (0.0 if val is not None else val_split, 0.0 if test is not None else test_split)
    train_idx, val_idx, test_idx = stratified_split(train.labels, fractions, seed)
    return Splits(
        train.subset(train_idx, "train"),
        val if val is not None else train.subset(val_idx, "val"),
        test if test is not None else train.subset(test_idx, "test"),
    )


def _check_training_classes(splits: Splits, spec: str) -> None:
    """Refuse training data a classifier cannot learn from: fewer than 2 classes (one class trains to loss 0 and
    "accuracy 1.0" while learning nothing), or a class with no training example left after carving val/test."""
    classes = splits.classes
    if len(classes) < 2:
        raise ValueError(f"{spec}: training needs at least 2 classes, found {len(classes)} {classes} (one class "
                         f"trains to loss 0 and accuracy 1.0 and learns nothing); add the other classes' images")
    counts = np.bincount(splits.train.labels, minlength=len(classes))[:len(classes)]
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise ValueError(f"{spec}: class(es) {empty} have no training example (after carving val/test out of "
                         f"train); add images or lower --val-split/--test-split")


def load_dataset(
    spec: str | Path,
    *,
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    data_dir: str | None = None,
    for_training: bool = True,
) -> Splits:
    """`digits`, `tfds:NAME`, or a folder (IDX files / split folders / class folders / flat + labels).

    Splits a source does not provide are carved out of its training part, stratified, with `seed`.
    `for_training` refuses data with fewer than 2 classes or a class without training examples; evaluation
    (which only reads the test part, and may hold only some classes) passes False."""
    splits = _load(str(spec), val_split, test_split, seed, labels, data_dir)
    if for_training:
        _check_training_classes(splits, str(spec))
    return splits


def _load(spec: str, val_split: float, test_split: float, seed: int, labels: Sequence[str] | None,
          data_dir: str | None) -> Splits:
    if spec == "digits":
        return split_dataset(digits(), val_split, test_split, seed)
    if spec.startswith("tfds:"):
        parts = tfds_splits(spec[5:], data_dir)
        train = parts.get("train")
        if train is None:
            raise ValueError(f"{spec} has no train split (splits: {sorted(parts)})")
        val = parts.get("validation") or parts.get("val")
        return _carve(train, val, parts.get("test"), val_split, test_split, seed)
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{spec!r} is neither 'digits', 'tfds:NAME', nor a folder")
    kind = folder_kind(root)
    if kind == "idx":
        train, test = idx_folder(root, labels)
        return _carve(train, None, test, val_split, test_split, seed)
    if kind == "splits":
        splits = _split_folders(root)
        train = image_folder(splits["train"])
        beside = list_folder(root).skipped  # a broken link next to train/ is reported too
        report_skipped(beside)
        train.skipped[:0] = beside
        given = {k: image_folder(p, classes=train.classes) for k, p in splits.items() if k != "train"}
        return _carve(train, given.get("val"), given.get("test"), val_split, test_split, seed)
    if kind == "classes":
        return split_dataset(image_folder(root), val_split, test_split, seed)
    return split_dataset(labelled_by_filename(root, labels), val_split, test_split, seed)


def folder_kind(root: str | Path) -> str:
    """How a folder holds its data: "idx" (MNIST-style files), "splits" (train/ val/ test/ folders),
    "classes" (one subfolder per class) or "flat" (images labelled by file name).

    Hidden/system folders (IGNORED_NAMES) and looping folder links do not count as subfolders."""
    root = Path(root)
    if is_idx_folder(root):
        return "idx"
    if _split_folders(root):
        return "splits"
    if list_folder(root).folders:
        return "classes"
    return "flat"
