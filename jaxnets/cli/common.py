"""What every `jaxnets` command shares: the exit codes, the parser that reports a mistake in one line, and the
one-line form of an error."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "EXIT_PEER_LOST", "EXIT_USAGE", "Parser", "one_line",
           "refuse_existing"]

EXIT_USAGE, EXIT_DIVERGED, EXIT_PEER_LOST, EXIT_INTERRUPTED = 2, 3, 4, 130


class Parser(argparse.ArgumentParser):
    """argparse that reports a command-line mistake in one line (no usage block) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (a file error with its path), never a trace."""
    if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e.strerror or ""):
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def refuse_existing(path, option: str) -> None:
    """FileExistsError for an output path that exists (a link counts): jaxnets never writes over a file."""
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} exists: jaxnets does not overwrite it; choose another {option}")
