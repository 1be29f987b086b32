"""Image folders: class folders (`root/<class>/*.jpg`) and flat folders labelled by file name, read with
one scanner that ignores hidden and system entries, reports broken links and special files, and refuses a
class without a single decodable image."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .preprocess import ImageError, PreprocessSpec, to_pixels

log = logging.getLogger("jaxnets.data")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

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


def list_folder(folder: Path) -> _Listing:
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
    listing = list_folder(folder)
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


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)


NESTED_FOLDER = "a folder inside a class folder: not read (class folders are read one level deep)"


def image_folder(root: str | Path, classes: Sequence[str] | None = None) -> Dataset:
    """`root/<class>/*.jpg` (torchvision ImageFolder layout); classes sorted by folder name.

    Every class folder must hold at least one readable image (else ValueError naming it). `classes` (the training
    classes, for val/test/evaluation folders) may be a superset of the folders: a folder with only some of the
    classes is fine, a folder with an unknown class is an error."""
    root = Path(root)
    listing = list_folder(root)
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
    report_skipped(skipped)
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
    report_skipped(skipped)
    if not sources:
        raise ValueError(f"no readable image labelled by file name in {root} (labels {labels})")
    for k, label in enumerate(labels):
        _require_readable([f for f, y in zip(sources, ys, strict=True) if y == k], f"label {label!r} in {root}",
                          f"each file gets the first of the labels {labels} its name contains")
    return Dataset(labels, sources, np.asarray(ys), skipped, root.name)
