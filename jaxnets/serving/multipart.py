"""A strict multipart/form-data reader for the front door (guard.py): the request's framing headers, a raw
image body, and the checked parts re-written as a canonical body for BentoML. Anything malformed, ambiguous or
not what the route takes (formspec.py) is a `Refusal` carrying the HTTP status to answer.

Plain Python over python-multipart (a BentoML dependency); no JAX, no BentoML.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

from .formspec import FormSpec, Limits, Part, Refusal, text

# ------------------------------------------------------------------------------------------------ headers

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'
_HEAD = re.compile(rf"\s*({_TOKEN}(?:/{_TOKEN})?)\s*")
_PARAM = re.compile(rf";\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})\s*")


def parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """`type; key=value; key="quoted"` → (type lowercased, {key: value}), strictly: a syntax error or a
    parameter given twice raises ValueError (two parsers reading an ambiguous header differently is how
    a request gets checked as one thing and served as another)."""
    head = _HEAD.match(value)
    if not head:
        raise ValueError("no value")
    params: dict[str, str] = {}
    pos = head.end()
    while pos < len(value):
        m = _PARAM.match(value, pos)
        if not m:
            raise ValueError(f"cannot parse {value[pos:pos + 40]!r}")
        key, raw = m.group(1).lower(), m.group(2)
        if key in params:
            raise ValueError(f"parameter {key!r} given twice")
        params[key] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = m.end()
    return head.group(1).lower(), params


_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=?-]{1,70}|[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")


def request_format(headers: list[tuple[bytes, bytes]], spec: FormSpec) -> tuple[str, bytes | str]:
    """("multipart", boundary) or, for a route that takes a raw image body, ("raw", image type), after
    checking the request's framing headers (415/400 otherwise)."""
    seen: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        seen.setdefault(name.lower(), []).append(value)
    for name in (b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"):
        if len(seen.get(name, [])) > 1:
            raise Refusal(400, f"the request has {len(seen[name])} {name.decode()} headers")
    if b"content-length" in seen and b"transfer-encoding" in seen:  # RFC 9112 6.1: how requests are smuggled
        raise Refusal(400, "the request has both content-length and transfer-encoding headers")
    encoding = seen.get(b"content-encoding", [b"identity"])[0].strip().lower()
    if encoding not in (b"identity", b""):
        raise Refusal(415, f"content-encoding {encoding.decode('latin-1')!r} is not accepted; send the bytes as is")
    ctype = seen.get(b"content-type", [b""])[0].decode("latin-1")
    try:
        kind, params = parse_header_value(ctype)
    except ValueError:
        kind, params = "", {}
    if spec.raw and kind.startswith("image/"):
        return "raw", _image_type(kind, ctype)
    if kind != "multipart/form-data":
        got = f"content-type {ctype[:60]!r}" if ctype else "no content-type"
        raw = f", or one image as the body with content-type {', '.join(IMAGE_TYPES)}" if spec.raw else ""
        raise Refusal(415, f"{got}: send the image(s) as multipart/form-data{raw}")
    boundary = params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise Refusal(400, "multipart/form-data without a valid boundary parameter in its content-type")
    return "multipart", boundary.encode("latin-1")


# ------------------------------------------------------------------------------------------------ raw bodies

# the image types a raw body may declare, each with a test of how that format's bytes begin: a body that does
# not begin as its content-type says is refused (a client whose header lies is told so, not guessed at)
IMAGE_TYPES: dict[str, Callable[[bytes], bool]] = {
    "image/png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "image/webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "image/gif": lambda b: b[:6] in (b"GIF87a", b"GIF89a"),
    "image/bmp": lambda b: b.startswith(b"BM"),
    "image/tiff": lambda b: b[:4] in (b"II*\x00", b"MM\x00*"),
}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-ms-bmp": "image/bmp"}


def _image_type(kind: str, ctype: str) -> str:
    kind = _ALIASES.get(kind, kind)
    if kind not in IMAGE_TYPES:
        raise Refusal(415, f"content-type {ctype[:60]!r} is not an image type this route takes "
                           f"({', '.join(IMAGE_TYPES)}, or multipart/form-data)")
    return kind


def raw_image_part(spec: FormSpec, image_type: str, body: bytes) -> Part:
    """A raw body as the route's file part, once it is known to begin as its declared type (400 otherwise)."""
    if not body:
        raise Refusal(400, f"empty body: send the {image_type} bytes as the request body")
    if not IMAGE_TYPES[image_type](body):
        raise Refusal(400, f"the body is not {image_type} as its content-type says (it does not begin as one)")
    return Part(spec.file_field, "upload", image_type, bytearray(body))


def query_parts(query: bytes, spec: FormSpec, max_bytes: int) -> list[Part]:
    """A raw body's text fields (`?top_k=3`), checked as the form's would be: an unknown, repeated or bad
    parameter is a 400."""
    parts: list[Part] = []
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, strict_parsing=bool(query),
                          encoding="utf-8", errors="strict", max_num_fields=len(spec.text_fields) + 1)
    except ValueError as e:
        raise Refusal(400, f"bad query string: {str(e)[:100]}") from None
    for name, value in pairs:
        if name not in spec.text_fields:
            raise Refusal(400, f"unexpected query parameter {name[:40]!r}; this route takes "
                               f"{', '.join(spec.text_fields) or 'none'} with a raw image body")
        if any(p.name == name for p in parts):
            raise Refusal(400, f"query parameter {name!r} given twice")
        if len(value.encode()) > max_bytes:
            raise Refusal(400, f"{name}: above {max_bytes} bytes")
        if message := spec.text_fields[name](value):
            raise Refusal(400, f"{name}: {message}")
        parts.append(Part(name, None, None, bytearray(value.encode())))
    return parts


# ------------------------------------------------------------------------------------------------ the form


class StrictForm:
    """A streaming multipart/form-data reader that refuses everything a careful server would not guess at:
    malformed framing, a body cut short, too many parts, long or repeated part headers, parts without a
    name or under a name the route does not take, a text field where a file is expected (or the
    reverse), a field sent more often than the route takes it, bad text values, odd file names."""

    ALLOWED_HEADERS = frozenset({"content-disposition", "content-type", "content-transfer-encoding"})

    def __init__(self, spec: FormSpec, boundary: bytes, limits: Limits):
        self.spec, self.limits = spec, limits
        self.parts: list[Part] = []
        self.counts: dict[str, int] = {}
        self.ended = False
        self._headers: dict[str, str] = {}
        self._field, self._value = bytearray(), bytearray()
        self._part: Part | None = None
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }, max_header_count=limits.max_part_headers, max_header_size=limits.max_part_header_bytes)

    def feed(self, chunk: bytes) -> None:
        if self.ended:
            return  # an epilogue after the closing boundary: RFC 2046 allows it, nothing reads it
        try:
            self.parser.write(chunk)
        except FormParserError as e:
            raise Refusal(400, f"malformed multipart body: {e}") from None

    def finish(self) -> list[Part]:
        """All parts, once the body has ended: refuses a body without its closing boundary or a field missing."""
        if not self.ended:
            raise Refusal(400, "malformed multipart body: it ends before the closing boundary (cut short, or "
                               "a boundary that does not match the content-type)")
        if self.counts.get(self.spec.file_field, 0) < self.spec.min_files:
            raise Refusal(400, f"no file in field '{self.spec.file_field}'; {self.spec.describe()}")
        return self.parts

    # parser callbacks ----------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers = {}
        self._part = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        value = text(bytes(self._value)).strip()
        self._field, self._value = bytearray(), bytearray()
        where = f"part {len(self.parts) + 1}"
        if name not in self.ALLOWED_HEADERS:
            raise Refusal(400, f"{where}: unexpected header {name[:40]!r}")
        if name in self._headers:
            raise Refusal(400, f"{where}: two {name} headers")
        self._headers[name] = value

    def _headers_finished(self) -> None:
        self._part = self._check_part(f"part {len(self.parts) + 1}")  # refuses a field repeated too often
        self.parts.append(self._part)
        if len(self.parts) > self.spec.max_parts:  # so this cannot happen; kept as the bound it implies
            raise Refusal(413, f"more than {self.spec.max_parts} parts in the form; {self.spec.describe()}")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.data += data[start:end]
        if self._part.filename is None and len(self._part.data) > self.limits.max_text_field_bytes:
            raise Refusal(400, f"field '{self._part.name}': above {self.limits.max_text_field_bytes} bytes")

    def _part_end(self) -> None:
        part = self._part
        assert part is not None
        if part.filename is None:
            message = self.spec.text_fields[part.name](text(bytes(part.data)))
            if message:
                raise Refusal(400, f"{part.name}: {message}")

    def _end(self) -> None:
        self.ended = True

    # checks ----------------------------------------------------------------------------------------
    def _check_part(self, where: str) -> Part:
        """The part's headers, read strictly, against what the route takes."""
        disposition = self._headers.get("content-disposition")
        if disposition is None:
            raise Refusal(400, f"{where}: no content-disposition header")
        try:
            kind, params = parse_header_value(disposition)
        except ValueError as e:
            raise Refusal(400, f"{where}: bad content-disposition ({e})") from None
        unknown = set(params) - {"name", "filename", "filename*"}
        if kind != "form-data" or unknown:
            raise Refusal(400, f"{where}: content-disposition must be form-data with a name (and a filename)")
        name = params.get("name")
        if not name:
            raise Refusal(400, f"{where}: a part without a name; {self.spec.describe()}")
        if name != self.spec.file_field and name not in self.spec.text_fields:
            raise Refusal(400, f"unexpected form field {name[:40]!r}; {self.spec.describe()}")
        self.counts[name] = self.counts.get(name, 0) + 1
        filename = params.get("filename")
        self._check_kind(name, filename)
        ctype = self._headers.get("content-type")
        if ctype is not None:
            try:
                parse_header_value(ctype)
            except ValueError as e:
                raise Refusal(400, f"{where}: bad content-type ({e})") from None
        encoding = self._headers.get("content-transfer-encoding", "binary").lower()
        if encoding not in ("binary", "8bit", "7bit"):
            raise Refusal(400, f"{where}: content-transfer-encoding {encoding[:20]!r} is not accepted")
        return Part(name, filename, ctype)

    def _check_kind(self, name: str, filename: str | None) -> None:
        """A file field must be a file part (never a string: BentoML would fetch it as a URL); a text field
        must be text; each field at most as often as the route takes it."""
        count = self.counts[name]
        if name == self.spec.file_field:
            if filename is None:
                raise Refusal(400, f"field '{name}' is text, not a file: upload the image bytes as a file "
                                   "(curl -F 'image=@photo.jpg'); URLs and server paths are not fetched")
            if len(filename.encode()) > self.limits.max_filename_bytes:
                raise Refusal(400, f"file name above {self.limits.max_filename_bytes} bytes")
            if re.search(r"[\x00-\x1f\x7f]", filename):
                raise Refusal(400, "file name with control characters")
            if count > self.spec.max_files:
                status = 413 if self.spec.max_files > 1 else 400
                raise Refusal(status, f"field '{name}' sent {count} times, above the limit of {self.spec.max_files}")
        else:
            if filename is not None:
                raise Refusal(400, f"field '{name}' is a file; send it as a plain form field")
            if count > 1:
                raise Refusal(400, f"field '{name}' sent twice")


def canonical_body(parts: list[Part], string_fields: frozenset[str] = frozenset()) -> tuple[bytes, bytes]:
    """(body, content-type) of a fresh multipart body holding exactly `parts`: BentoML parses what was
    checked, written by us, never the client's framing. File names are replaced by a neutral one; the
    `string_fields` are written as JSON strings (see FormSpec)."""
    for p in parts:
        if p.filename is None and p.name in string_fields:
            p.data = bytearray(json.dumps(text(bytes(p.data))).encode())
    while True:
        boundary = b"jaxnets-" + secrets.token_hex(16).encode()
        if not any(boundary in p.data for p in parts):
            break
    pieces = []
    for p in parts:
        head = f'--{boundary.decode()}\r\nContent-Disposition: form-data; name="{p.name}"'
        if p.filename is not None:
            head += '; filename="upload"\r\nContent-Type: application/octet-stream'
        pieces += [head.encode(), b"\r\n\r\n", bytes(p.data), b"\r\n"]
        p.data = bytearray()  # the copy above is the only one kept
    pieces.append(b"--" + boundary + b"--\r\n")
    return b"".join(pieces), b"multipart/form-data; boundary=" + boundary

