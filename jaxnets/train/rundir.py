"""The run directory: what jaxnets may write, overwrite and delete there, and nothing else.

Rule: jaxnets deletes or overwrites only files it can prove it wrote, and deletes only with `overwrite`.
The proof is `.jaxnets-run.json`, written when a run claims the directory and updated on every write:
the SHA-256 of each run file (config.json, history.*, curves.png, metrics.json) as jaxnets wrote it.
A write records the new digest beside the old one first, replaces the file, then keeps only the new one,
so a kill at any instant leaves a file that matches its record.
Checkpoint steps carry their own checksums (see `checkpoint.py`), which prove them ours the same way.

A start is checked first (`check`, read-only), prepared (data, model; may fail), and only then does it
`claim` the directory: a refused or failed start leaves the directory exactly as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import weakref
from pathlib import Path

from ..checkpoint import CHECKSUMS, MODEL_CARD, TRASH, TRASH_TOKEN, CheckpointError, pending_step, verify_step
from ..runtime.sharding import barrier, is_primary

MARKER = ".jaxnets-run.json"
RUN_FILES = ("config.json", "split.json", "history.json", "history.csv", "curves.png", "metrics.json", "report.html",
             "confusion.png", "top_losses.png")
CHECKPOINTS = "checkpoints"
# in checkpoints/: a card write cut short by a kill, the marker of the step being saved (and its write)
_OURS_IN_CHECKPOINTS = re.compile(r"^(\.model_card\.json\.\d+\.tmp|\.jaxnets-saving|\.\.jaxnets-saving\.\d+\.tmp)$")
_ORBAX_TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp(-\d+)?$")
# in the run directory: a write cut short by a kill, checkpoints being deleted by --overwrite
_OURS_IN_RUN = re.compile(r"^(\.(" + "|".join(re.escape(n) for n in RUN_FILES) + r")\.\d+\.tmp"
                          r"|\.\.jaxnets-run\.json\.\d+\.tmp|\.jaxnets-old-checkpoints)$")
OLD_CHECKPOINTS = ".jaxnets-old-checkpoints"


class RunDirError(FileExistsError):
    """The run directory holds something jaxnets did not write, or a run that needs resume/overwrite."""


# run directories this process holds the lock of: (st_dev, st_ino) -> [fd, number of RunDir objects holding it]
_HELD: dict[tuple[int, int], list[int]] = {}


def _in_use_message(path: Path) -> str:
    return (f"{path} is being written by another jaxnets run right now (train, resume or overwrite in another "
            "process); wait for it to end or choose another --out")


def _lock(owner: object, path: Path) -> None:
    """An exclusive flock on the run directory, held while `owner` lives (or the process): two runs started into
    one --out at the same time would otherwise both pass `check` and write their checkpoints and history into
    each other's. The same process may claim again (a resume after a failed fit); another process is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    key = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
    if key in _HELD:
        os.close(fd)
        _HELD[key][1] += 1
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(_in_use_message(path)) from None
        _HELD[key] = [fd, 1]
    weakref.finalize(owner, _unlock, key)


def _unlock(key: tuple[int, int]) -> None:
    held = _HELD.get(key)
    if held is not None:
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            os.close(held[0])


def _locked_elsewhere(path: Path) -> bool:
    """Another process holds the run directory's lock (read-only probe: nothing is written)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) in _HELD:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # closing the fd releases it
    except OSError:
        return True
    finally:
        os.close(fd)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _writable_parent(path: Path) -> None:
    """Refuse an output path below a file, or below a folder we cannot write into, before anything runs."""
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise NotADirectoryError(f"{parent} is not a folder: cannot create the run directory {path}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"{parent} is not writable: cannot create the run directory {path}")
            return


def _step_problem(step: Path, pending: int | None, hashes: bool) -> str | None:
    """None for a step folder jaxnets wrote: its files are exactly those of its checksum manifest (names and
    sizes; contents too with `hashes`), or it is the step whose save a kill cut short (named by SAVING, with
    no manifest yet). Otherwise what is wrong."""
    if not (step / CHECKSUMS).exists() and pending is not None and step.name == str(pending):
        return None
    try:
        verify_step(step, hashes=hashes)
        return None
    except CheckpointError as e:
        return str(e)


class RunDir:
    """A training run's output folder, written only through this class."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS

    # ------------------------------------------------------------------------------------------ ownership

    def _marker(self) -> dict[str, list[str]] | None:
        """{file name: [sha256, …]} of the run files jaxnets wrote here, or None if no jaxnets run owns the folder."""
        marker = self.path / MARKER
        if marker.is_symlink() or not marker.is_file():
            return None
        try:
            files = json.loads(marker.read_text())["files"]
            assert all(isinstance(v, list) and all(isinstance(d, str) for d in v) for v in files.values())
        except (ValueError, KeyError, TypeError, AttributeError, AssertionError):
            raise RunDirError(f"{marker} is damaged; cannot tell which files of {self.path} jaxnets wrote") from None
        return files

    def _is_ours(self, name: str, recorded: dict[str, list[str]] | None) -> bool:
        path = self.path / name
        if recorded is None or name not in recorded or path.is_symlink() or not path.is_file():
            return False
        return _digest(path.read_bytes()) in recorded[name]

    def _foreign_checkpoint_entry(self, owned: bool) -> Path | None:
        """The first entry of checkpoints/ that is not a jaxnets step, card or temporary entry of ours."""
        found = self._checkpoint_problem(owned)
        return found[0] if found else None

    def _checkpoint_problem(self, owned: bool, hashes: bool = False) -> tuple[Path, str] | None:
        """(entry, why) for the first entry of checkpoints/ jaxnets cannot prove it wrote, or None. `hashes`
        (before deleting): a step's contents too, not only its file names and sizes."""
        if not self.checkpoints.exists() and not self.checkpoints.is_symlink():
            return None
        foreign = "is not a jaxnets checkpoint of this run"
        if self.checkpoints.is_symlink() or not self.checkpoints.is_dir():
            return self.checkpoints, foreign
        if not owned:
            first = next(iter(sorted(self.checkpoints.iterdir())), None)  # an empty folder holds nothing to lose
            return (first, foreign) if first else None
        pending = pending_step(self.checkpoints)
        for entry in sorted(self.checkpoints.iterdir()):
            if entry.is_symlink():
                return entry, foreign
            if (entry.name == MODEL_CARD and entry.is_file()) or _OURS_IN_CHECKPOINTS.match(entry.name):
                continue
            if entry.name == TRASH and entry.is_dir() and ((entry / TRASH_TOKEN).is_file() or not any(entry.iterdir())):
                continue  # steps this run dropped (empty: a kill came between creating it and its token)
            tmp = _ORBAX_TMP.match(entry.name)
            if tmp and entry.is_dir() and pending is not None and int(tmp.group(1)) == pending:
                continue  # orbax's own folder for the step being saved when a kill came
            if not (entry.name.isdecimal() and entry.is_dir()):
                return entry, foreign
            if problem := _step_problem(entry, pending, hashes):
                return entry, f"does not match what jaxnets saved ({problem})"
        return None

    def has_run(self) -> bool:
        return any((self.path / n).exists() for n in RUN_FILES) or (
            self.checkpoints.is_dir() and any(p.name.isdecimal() for p in self.checkpoints.iterdir()))

    def check(self, resume: bool = False, overwrite: bool = False) -> None:
        """Read-only: raise RunDirError (naming the file) unless a run may start here as asked."""
        _writable_parent(self.path)
        if not self.path.exists():
            return
        if is_primary() and self.path.is_dir() and _locked_elsewhere(self.path):  # process 0 takes it in claim
            raise RunDirError(_in_use_message(self.path))
        marker = self.path / MARKER
        if marker.is_symlink() or (marker.exists() and not marker.is_file()):
            raise RunDirError(f"{marker} is not a file jaxnets wrote (a link or a folder); refusing to touch it")
        recorded = self._marker()
        if recorded is None and (self.path / "convert.json").is_file() and (self.checkpoints / MODEL_CARD).is_file():
            raise RunDirError(f"{self.path} holds a checkpoint written by `jaxnets convert`, not a run: train into "
                              f"another --out with --pretrained {self.path}")
        for name in RUN_FILES:
            path = self.path / name
            if (path.exists() or path.is_symlink()) and not self._is_ours(name, recorded):
                raise RunDirError(f"{path} was not written by a jaxnets run here (or was changed since); "
                                  "refusing to overwrite it: move it away or choose another --out")
        found = self._checkpoint_problem(owned=recorded is not None, hashes=overwrite)
        if found is not None:
            raise RunDirError(f"{found[0]} {found[1]}; refusing to touch it: move it away or choose another --out")
        if self.has_run() and not (resume or overwrite):
            raise RunDirError(f"{self.path} already holds a jaxnets run: pass --resume to continue it, --overwrite "
                              "to start it again, or choose another --out")

    # ------------------------------------------------------------------------------------------ writing

    def claim(self, overwrite: bool = False) -> None:
        """Make the folder ours (after `check`). With overwrite, delete the previous run's files, and only them.
        With several processes, process 0 does it and the others wait for it."""
        if is_primary():
            self._claim(overwrite)
        barrier("jaxnets-claim")

    def _claim(self, overwrite: bool) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, f"cannot create the run directory {self.path}: {e.strerror}") from None
        if not getattr(self, "_locked", False):
            _lock(self, self.path)
            self._locked = True
        recorded = self._marker()
        self._remove_leftovers()
        if recorded is not None and not overwrite:
            return
        if overwrite and recorded is not None:
            if (found := self._checkpoint_problem(owned=True, hashes=True)) is not None:
                raise RunDirError(f"{found[0]} {found[1]}; refusing to delete it")
            for name in RUN_FILES:
                if self._is_ours(name, recorded):
                    (self.path / name).unlink()
            if self.checkpoints.is_dir():
                # one atomic rename first: a kill during the deletion leaves a folder plainly ours, not half a run
                self.checkpoints.rename(self.path / OLD_CHECKPOINTS)
                shutil.rmtree(self.path / OLD_CHECKPOINTS)
            recorded = {}
        self._save_marker(recorded or {})

    def _remove_leftovers(self) -> None:
        """Temporary files and deleted checkpoints a kill left behind (jaxnets' own names only)."""
        for entry in self.path.iterdir():
            if _OURS_IN_RUN.match(entry.name) and not entry.is_symlink():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if self.checkpoints.is_dir() and not self.checkpoints.is_symlink():
            for entry in self.checkpoints.glob(".*.tmp"):
                if _OURS_IN_CHECKPOINTS.match(entry.name) and entry.is_file() and not entry.is_symlink():
                    entry.unlink()

    def _save_marker(self, files: dict[str, list[str]]) -> None:
        tmp = self.path / f".{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"jaxnets_run": 1, "files": files}, indent=1))
        tmp.replace(self.path / MARKER)

    def write(self, name: str, data: bytes | str) -> None:
        """Write one run file atomically and record its checksum: proof, later, that jaxnets wrote it. Process 0
        alone writes (every process holds the same values)."""
        if name not in RUN_FILES:
            raise ValueError(f"{name} is not a run file")
        if not is_primary():
            return
        recorded = self._marker()
        if recorded is None:
            raise RunDirError(f"{self.path} was not claimed by this run")
        path = self.path / name
        if (path.exists() or path.is_symlink()) and not self._is_ours(name, recorded):
            raise RunDirError(f"{path} was changed by someone else during the run; refusing to overwrite it")
        data = data.encode() if isinstance(data, str) else data
        digest = _digest(data)
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        self._save_marker({**recorded, name: [*recorded.get(name, [])[-1:], digest]})
        tmp.replace(path)
        self._save_marker({**recorded, name: [digest]})
