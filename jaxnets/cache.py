"""jaxnets' one cache root, for everything it keeps between runs (downloaded weights, built kernels): a room on
the lowest floor, so that pretrained/ and runtime/ both find it without importing each other. Standard library
only."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "JAXNETS_CACHE"


def cache_dir() -> Path:
    """$JAXNETS_CACHE, else $XDG_CACHE_HOME/jaxnets, else ~/.cache/jaxnets."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxnets"
