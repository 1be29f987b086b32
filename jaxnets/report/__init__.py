"""What a run shows a person: the history as CSV and the loss/accuracy curves as PNG bytes (the run
directory writes them), and `write_new_files` for reports written outside a run directory."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["REPORT_FILES", "curves_png", "history_csv", "refuse_existing_files", "write_new_files"]


def history_csv(history: list[dict[str, float]], fields: Sequence[str]) -> str:
    """The epoch history as CSV text, one row per epoch, in the order of `fields`."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue()


def curves_png(history: list[dict[str, float]]) -> bytes:
    """Loss and accuracy per epoch, train and validation: the classic course plots (without matplotlib, the
    [report] extra, a small picture saying so: training still writes its curves.png)."""
    from .figures import NO_FIGURES, figure_png, has_figures, note_png, pyplot

    if not has_figures():
        return note_png(NO_FIGURES)
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        if any(h.get(f"val_{key}") is not None for h in history):
            ax.plot(epochs, [h.get(f"val_{key}") for h in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return figure_png(fig)


REPORT_FILES = ("report.html", "confusion.png", "top_losses.png")


def refuse_existing_files(folder: Path, names: Sequence[str]) -> None:
    """FileExistsError naming the files of `names` that `folder` already has (a link counts)."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder for the report")
    taken = [name for name in names if (folder / name).exists() or (folder / name).is_symlink()]
    if taken:
        raise FileExistsError(f"{folder} already has {', '.join(taken)}: jaxnets does not overwrite files; "
                              "choose another folder")


def write_new_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write each file into `folder` (made if missing) only if none of them exists yet: a report never replaces a
    file, ours or not. Each is created exclusively, so a file that appears meanwhile is not replaced either."""
    refuse_existing_files(folder, list(files))
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with open(folder / name, "xb") as f:
            f.write(data)
