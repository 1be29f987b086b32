"""Where examples come from. Every source becomes a `Dataset`: class names, length, and example i.

A Dataset holds either file paths (decoded on demand, unreadable ones reported and skipped) or an
in-memory uint8 array. `load_dataset(spec)` is the single entry point the CLI uses; it returns the
train/val/test `Splits`.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .preprocess import ImageError, ImageLike, PreprocessSpec, to_pixels

log = logging.getLogger("jaxnets.data")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclass
class Dataset:
    """Examples of one split. `sources[i]` is a path or a uint8 image array; `labels[i]` its class index."""

    classes: list[str]
    sources: Sequence[ImageLike]
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if len(self.sources) != len(self.labels):
            raise ValueError(f"{len(self.sources)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, i: int, spec: PreprocessSpec) -> np.ndarray:
        """Example i as the model's uint8 HWC pixels. Raises ImageError for an unreadable file."""
        return to_pixels(self.sources[i], spec)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        src = self.sources[idx] if isinstance(self.sources, np.ndarray) else [self.sources[i] for i in idx]
        return Dataset(self.classes, src, self.labels[idx], self.skipped, name or self.name)

    def skip(self, source: ImageLike, reason: str) -> None:
        self.skipped.append((str(source), reason))
        log.warning("skipped %s: %s", source, reason)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def skipped(self) -> list[tuple[str, str]]:
        seen, out = set(), []
        for part in (self.train, self.val, self.test):
            for item in part.skipped:
                if item not in seen:
                    seen.add(item)
                    out.append(item)
        return out


# ----------------------------------------------------------------------------------------------- splits

def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Indices for each fraction (the rest goes to the first part), stratified by class.

    Uses numpy's PCG64 generator seeded explicitly, which gives the same permutation on every
    machine and numpy version, like torch's `random_split` with a fixed generator."""
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions must be ≥ 0 and leave something to train on, got {list(fractions)}")
    rng = np.random.Generator(np.random.PCG64(seed))
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        counts = [round(len(idx) * f) for f in fractions]
        for k, n in enumerate(counts, start=1):
            parts[k].extend(idx[start:start + n])
            start += n
        parts[0].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def split_dataset(ds: Dataset, val: float = 0.1, test: float = 0.1, seed: int = 0) -> Splits:
    train_idx, val_idx, test_idx = stratified_split(ds.labels, (val, test), seed)
    return Splits(ds.subset(train_idx, "train"), ds.subset(val_idx, "val"), ds.subset(test_idx, "test"))


# ---------------------------------------------------------------------------------------------- folders
#
# Links: a link to a file is followed (datasets are often assembled from links); a link to a folder is followed
# only where a folder is expected (a class or split folder) and only when it does not point back at a folder that
# contains it. Class folders are read one level deep, so no walk is recursive and no cycle can be entered.

# Names that operating systems, tools and NAS boxes create next to user data (Finder, Jupyter, git, Python,
# Windows, Synology). They are never classes, never split folders, never examples, and never reported: matched
# case-insensitively, plus every dot-name (.DS_Store, .git, .ipynb_checkpoints, ._cat.1.jpg AppleDouble files).
IGNORED_NAMES = frozenset(name.casefold() for name in (
    "__MACOSX", "__pycache__", "$RECYCLE.BIN", "System Volume Information", "@eaDir", "lost+found",
    "Thumbs.db", "ehthumbs.db", "desktop.ini",
))


def is_ignored(name: str) -> bool:
    """True for hidden and system entries (see IGNORED_NAMES): they are skipped silently in every layout."""
    return name.startswith(".") or name.casefold() in IGNORED_NAMES


@dataclass
class _Listing:
    """The visible entries of one folder, sorted by name, and the ones that cannot be used, with why."""

    folders: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _link_problem(path: Path, parent: Path) -> str | None:
    """Why the symbolic link `path` cannot be used (dangling, a loop, a folder containing it), or None."""
    target = os.readlink(path)
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        return f"broken symbolic link: its target {target} does not exist"
    except (OSError, RuntimeError):  # ELOOP (Python ≥ 3.13) or RuntimeError("Symlink loop") (≤ 3.12)
        return f"symbolic link loop ({path.name} -> {target})"
    if resolved.is_dir():
        here = parent.resolve()
        if resolved == here or resolved in here.parents:
            return f"symbolic link to {resolved}, a folder that contains it: not followed (it would loop)"
    return None


def _list_folder(folder: Path) -> _Listing:
    """Sort one folder's entries into folders, regular files and skipped ones, without following any loop.

    Hidden/system names are dropped silently; dangling or looping links and special files (FIFOs, sockets,
    devices: reading one could block forever) are reported in `skipped`."""
    out = _Listing()
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        out.skipped.append((str(folder), f"cannot list folder: {e.strerror or e}"))
        return out
    for p in entries:
        if is_ignored(p.name):
            continue
        problem = _link_problem(p, folder) if p.is_symlink() else None
        if problem:
            out.skipped.append((str(p), problem))
        elif p.is_dir():
            out.folders.append(p)
        elif p.is_file():
            out.files.append(p)
        else:
            out.skipped.append((str(p), "not a regular file"))
    return out


def _image_files(folder: Path, skipped: list[tuple[str, str]], nested: str | None = None) -> list[Path]:
    """The candidate image files directly in `folder`; everything else it holds is reported in `skipped`.

    `nested` is the reason given for a subfolder (None: subfolders are not expected there and are ignored)."""
    listing = _list_folder(folder)
    skipped += listing.skipped
    if nested:
        skipped += [(str(p), nested) for p in listing.folders]
    files = []
    for p in listing.files:
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((str(p), f"unsupported file type {p.suffix or '(none)'}"))
        elif _size(p) == 0:
            skipped.append((str(p), "empty file (0 bytes)" if p.exists() else "disappeared while the folder was read"))
        else:
            files.append(p)
    return files


def _size(path: Path) -> int:
    """The file's size, 0 when it cannot be read (it vanished or is not accessible): then it is reported."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


_PROBE = PreprocessSpec(4, 4, 3)  # decoding at 4×4 lets Pillow's JPEG draft mode skip most of the work
_SHOWN = 3  # bad files quoted in a refusal message


def _unreadable(path: Path) -> str | None:
    """Why `path` is not a usable image (the loader's own decoding, at a tiny size), or None when it is."""
    try:
        to_pixels(path, _PROBE)
    except ImageError as e:
        return str(e)
    return None


def _require_readable(files: Sequence[Path], what: str, hint: str) -> None:
    """Refuse a class none of whose files decode: it would be a class the model never sees.

    Stops at the first good file, so a healthy dataset costs one small decode per class."""
    reasons = []
    for f in files:
        reason = _unreadable(f)
        if reason is None:
            return
        reasons.append(f"{f.name}: {reason}")
    if not files:
        raise ValueError(f"{what} has no image file ({hint})")
    shown = "; ".join(reasons[:_SHOWN]) + ("; …" if len(reasons) > _SHOWN else "")
    raise ValueError(f"{what} has no readable image: none of its {len(files)} file(s) decodes ({shown}); {hint}")


def _report(skipped: list[tuple[str, str]]) -> None:
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)


NESTED_FOLDER = "a folder inside a class folder: not read (class folders are read one level deep)"


def image_folder(root: str | Path, classes: Sequence[str] | None = None) -> Dataset:
    """`root/<class>/*.jpg` (torchvision ImageFolder layout); classes sorted by folder name.

    Every class folder must hold at least one readable image (else ValueError naming it). `classes` (the training
    classes, for val/test/evaluation folders) may be a superset of the folders: a folder with only some of the
    classes is fine, a folder with an unknown class is an error."""
    root = Path(root)
    listing = _list_folder(root)
    folders = listing.folders
    names = [p.name for p in folders]
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"{root}: class folder(s) {unknown} are not among the training classes {list(classes)}")
    classes = list(classes) if classes is not None else names
    skipped = list(listing.skipped)
    sources, labels = [], []
    for folder in folders:
        files = _image_files(folder, skipped, nested=NESTED_FOLDER)
        _require_readable(files, f"class folder {folder}", "add images to it or remove it")
        sources += files
        labels += [classes.index(folder.name)] * len(files)
    _report(skipped)
    if not sources:
        raise ValueError(f"no readable image in {root} (expected {root}/<class>/*.jpg|png|…)")
    return Dataset(classes, sources, np.asarray(labels), skipped, root.name)


def _filename_labels(files: Sequence[Path]) -> list[str]:
    """Infer labels from file names like cat.1.jpg / dog_7.png: the leading run of letters."""
    found = set()
    for f in files:
        m = re.match(r"[A-Za-z]+", f.name)
        if m:
            found.add(m.group(0).lower())
    return sorted(found)


def labelled_by_filename(root: str | Path, labels: Sequence[str] | None = None) -> Dataset:
    """One flat folder whose file names carry the label (`cat.1.jpg`): the first label the name contains,
    case-insensitive, in the order given. Files that match none are reported and skipped; a label that matches
    no readable file is an error (it would be a class the model never sees)."""
    root = Path(root)
    skipped: list[tuple[str, str]] = []
    files = _image_files(root, skipped)
    labels = [str(x).lower() for x in (labels or _filename_labels(files))]
    sources, ys = [], []
    for f in files:
        name = f.name.lower()
        hit = next((k for k, lab in enumerate(labels) if lab in name), None)
        if hit is None:
            skipped.append((str(f), f"file name matches none of the labels {labels}"))
        else:
            sources.append(f)
            ys.append(hit)
    _report(skipped)
    if not sources:
        raise ValueError(f"no readable image labelled by file name in {root} (labels {labels})")
    for k, label in enumerate(labels):
        _require_readable([f for f, y in zip(sources, ys, strict=True) if y == k], f"label {label!r} in {root}",
                          f"each file gets the first of the labels {labels} its name contains")
    return Dataset(labels, sources, np.asarray(ys), skipped, root.name)


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

def digits() -> Dataset:
    """The 1,797 real 8×8 handwritten digits scikit-learn ships: the embedded default, no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Dataset([str(i) for i in range(10)], images, d.target, name="digits")


def from_arrays(images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None) -> Dataset:
    """Your own numpy images (N×H×W or N×H×W×C, uint8 or [0, 1] floats) and integer labels."""
    labels = np.asarray(labels)
    classes = list(classes) if classes is not None else [str(i) for i in range(int(labels.max()) + 1)]
    return Dataset(classes, np.asarray(images), labels, name="arrays")


# ---------------------------------------------------------------------------------------------- TFDS

def tfds_splits(name: str, data_dir: str | None = None) -> dict[str, Dataset]:
    """A prepared TFDS dataset: through `tfds.data_source` (array_record, no TensorFlow needed), or
    `tfds.load` when TensorFlow is importable. Raises one clear error saying how to prepare it."""
    import tensorflow_datasets as tfds

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
    for p in _list_folder(root).folders:
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
        beside = _list_folder(root).skipped  # a broken link next to train/ is reported too
        _report(beside)
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
    if _list_folder(root).folders:
        return "classes"
    return "flat"
