"""What each API route of the service takes and the limits a request must keep: the contract the front door
(guard.py) and the strict form reader (multipart.py) both check against. A request outside it is a `Refusal`
carrying the HTTP status to answer.

Plain Python; no JAX, no BentoML.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


class Refusal(Exception):
    """A request the service will not serve: answered `status` with {"error": message}."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, list(headers)


def env_number(name: str, default: float, kind: type = int, minimum: float = 1) -> Any:
    """A positive number from the environment; a bad value stops start-up with the variable's name."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Limits:
    """Everything the front door bounds, with the environment variables that set it."""

    max_request_bytes: int = 10 * MiB  # JAXNETS_MAX_REQUEST_BYTES: whole request body
    read_timeout_s: float = 30.0  # JAXNETS_READ_TIMEOUT_S: the whole body must arrive within this
    max_uploads: int = 8  # JAXNETS_MAX_UPLOADS: API requests read or processed at once (per worker)
    queue_timeout_s: float = 10.0  # JAXNETS_QUEUE_TIMEOUT_S: wait for a free slot, then 503
    max_part_header_bytes: int = 1024  # one header line of a part
    max_part_headers: int = 4  # header lines per part
    max_filename_bytes: int = 255
    max_text_field_bytes: int = 64

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_request_bytes=env_number("JAXNETS_MAX_REQUEST_BYTES", cls.max_request_bytes),
            read_timeout_s=env_number("JAXNETS_READ_TIMEOUT_S", cls.read_timeout_s, float, 0.1),
            max_uploads=env_number("JAXNETS_MAX_UPLOADS", cls.max_uploads),
            queue_timeout_s=env_number("JAXNETS_QUEUE_TIMEOUT_S", cls.queue_timeout_s, float, 0),
        )


def positive_int(value: str) -> str | None:
    """Validator for top_k: the error message, or None when the value is fine."""
    if re.fullmatch(r"[0-9]{1,6}", value) and int(value) >= 1:
        return None
    return f"expected a positive integer, got {value[:20]!r}"


def short_text(value: str) -> str | None:
    """Validator for a class name: one line of printable text, at most 200 characters."""
    if 0 < len(value) <= 200 and value.isprintable():
        return None
    return f"expected a class name (one line, at most 200 characters), got {value[:20]!r}"


@dataclass(frozen=True)
class FormSpec:
    """What one API route takes: one file field (between min_files and max_files parts) and text fields."""

    file_field: str
    min_files: int = 1
    max_files: int = 1
    text_fields: dict[str, Callable[[str], str | None]] = field(default_factory=dict)
    # text fields BentoML must receive as strings: it JSON-decodes form values, so a class named "3" would
    # arrive as the number 3; these are handed over JSON-encoded
    string_fields: frozenset[str] = frozenset()
    # the route also takes one image as the whole body (Content-Type: image/...), its text fields in the query
    raw: bool = False

    @property
    def max_parts(self) -> int:
        return self.max_files + len(self.text_fields)

    def describe(self) -> str:
        files = f"'{self.file_field}' (a file{', repeated' if self.max_files > 1 else ''})"
        texts = "".join(f" and '{name}' (optional)" for name in self.text_fields)
        return f"this route takes multipart/form-data with {files}{texts}"


@dataclass
class Part:
    """One validated part of the form."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)


def text(data: bytes) -> str:
    """A text field's bytes as a string: UTF-8, or Latin-1 when they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
