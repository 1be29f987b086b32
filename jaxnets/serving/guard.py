"""The service's front door: an ASGI wrapper around the whole BentoML app (outside its metrics middleware).

BentoML 1.4 parses forms leniently and acts on what it finds: a text field where a file is expected is
downloaded as a URL, malformed multipart bodies and unknown fields end in 500, every unknown path adds a
series to /metrics, and a request body is read whole, however slowly it comes and however many come at
once. So the front door decides everything about a request to an API route before BentoML sees it:

* routes: a path the app does not serve is answered 404 here, so it never reaches the metrics middleware;
  an API route answers only POST (405).
* the body: multipart/form-data only (415 otherwise), read within a deadline (408) and a size limit (413),
  parsed strictly as it arrives (400 for anything malformed, ambiguous or not what the route takes), with
  limits on parts, part headers and file names. Every file field must be a real file part, so no string
  ever reaches BentoML's string-to-file coercion.
* what BentoML gets: a freshly written multipart body holding only the validated parts, never the client's.
* how many: at most `max_uploads` API requests are read or processed at once; the next ones wait up to
  `queue_timeout_s`, then get 503, so memory is bounded by about max_uploads × max_request_bytes.
* answers: every error response (BentoML's too) leaves as {"error": "<message>"}, application/json.

It imports neither JAX nor BentoML: it is plain ASGI over python-multipart (a BentoML dependency).
"""

from __future__ import annotations

import asyncio
import http
import json
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 1024 * 1024


class Refusal(Exception):
    """A request the service will not serve: answered `status` with {"error": message}."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, list(headers)


def _env_number(name: str, default: float, kind: type = int, minimum: float = 1) -> Any:
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
            max_request_bytes=_env_number("JAXNETS_MAX_REQUEST_BYTES", cls.max_request_bytes),
            read_timeout_s=_env_number("JAXNETS_READ_TIMEOUT_S", cls.read_timeout_s, float, 0.1),
            max_uploads=_env_number("JAXNETS_MAX_UPLOADS", cls.max_uploads),
            queue_timeout_s=_env_number("JAXNETS_QUEUE_TIMEOUT_S", cls.queue_timeout_s, float, 0),
        )


def positive_int(value: str) -> str | None:
    """Validator for top_k: the error message, or None when the value is fine."""
    if re.fullmatch(r"[0-9]{1,6}", value) and int(value) >= 1:
        return None
    return f"expected a positive integer, got {value[:20]!r}"


@dataclass(frozen=True)
class FormSpec:
    """What one API route takes: one file field (between min_files and max_files parts) and text fields."""

    file_field: str
    min_files: int = 1
    max_files: int = 1
    text_fields: dict[str, Callable[[str], str | None]] = field(default_factory=dict)

    @property
    def max_parts(self) -> int:
        return self.max_files + len(self.text_fields)

    def describe(self) -> str:
        files = f"'{self.file_field}' (a file{', repeated' if self.max_files > 1 else ''})"
        texts = "".join(f" and '{name}' (optional)" for name in self.text_fields)
        return f"this route takes multipart/form-data with {files}{texts}"


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


def request_boundary(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The multipart boundary of a request, after checking its framing headers (415/400 otherwise)."""
    seen: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        seen.setdefault(name.lower(), []).append(value)
    for name in (b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"):
        if len(seen.get(name, [])) > 1:
            raise Refusal(400, f"the request has {len(seen[name])} {name.decode()} headers")
    encoding = seen.get(b"content-encoding", [b"identity"])[0].strip().lower()
    if encoding not in (b"identity", b""):
        raise Refusal(415, f"content-encoding {encoding.decode('latin-1')!r} is not accepted; send the bytes as is")
    ctype = seen.get(b"content-type", [b""])[0].decode("latin-1")
    try:
        kind, params = parse_header_value(ctype)
    except ValueError:
        kind, params = "", {}
    if kind != "multipart/form-data":
        got = f"content-type {ctype[:60]!r}" if ctype else "no content-type"
        raise Refusal(415, f"{got}: send the image(s) as multipart/form-data")
    boundary = params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise Refusal(400, "multipart/form-data without a valid boundary parameter in its content-type")
    return boundary.encode("latin-1")


# ------------------------------------------------------------------------------------------------ the form


@dataclass
class Part:
    """One validated part of the form."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)


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
        value = _text(bytes(self._value)).strip()
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
            message = self.spec.text_fields[part.name](_text(bytes(part.data)))
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


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def canonical_body(parts: list[Part]) -> tuple[bytes, bytes]:
    """(body, content-type) of a fresh multipart body holding exactly `parts`: BentoML parses what was
    checked, written by us, never the client's framing. File names are replaced by a neutral one."""
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


# ------------------------------------------------------------------------------------------------ answers


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def reply(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer {"error": message} with `status`."""
    body = error_body(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def error_message(status: int, body: bytes) -> str:
    """The message in any error body BentoML or Starlette writes: {"error"}, [{"error"}], a pydantic
    validation error ({"error", "detail": [{"loc", "msg"}]}), {"detail"}, or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = _text(body).strip()
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
            return "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg', '')}".lstrip(": ")
                             for d in detail)
        data = data.get("error") or detail or ""
    message = data if isinstance(data, str) else json.dumps(data)
    if not message:
        try:
            message = http.HTTPStatus(status).phrase
        except ValueError:
            message = f"HTTP {status}"
    return message[:2000]


def normalising_send(send: Send) -> Send:
    """A `send` that rewrites every error response (status >= 400) into {"error": "<message>"} JSON."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        if sum(map(len, chunks)) < 65536:
            chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = error_body(error_message(held["status"], b"".join(chunks)))
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        await send({**held, "headers": [*headers, (b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


# ------------------------------------------------------------------------------------------------ the door


def served_paths(app: Any) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact paths, path prefixes) the Starlette app answers: its routes, and the files of its static
    mounts (listed once, so a request for a missing static file is answered here too)."""
    exact, prefixes = set(), []
    for route in getattr(app, "routes", []):
        path = getattr(route, "path", None)
        if path is None:
            continue
        directory = getattr(getattr(route, "app", None), "directory", None)
        if directory is not None:
            root = Path(directory)
            exact.update(f"{path}/{f.relative_to(root).as_posix()}" for f in root.rglob("*") if f.is_file())
        elif "{" in path or not hasattr(route, "methods"):
            prefixes.append(path.split("{")[0].rstrip("/") + "/")  # a mount or a parametrised route
        else:
            exact.add(path)
    return frozenset(exact), tuple(prefixes)


class FrontDoor:
    """ASGI wrapper around the whole BentoML app: see the module docstring."""

    def __init__(self, app: ASGIApp, forms: dict[str, FormSpec], limits: Limits | None = None):
        self.app, self.forms = app, forms
        self.limits = limits or Limits.from_env()
        self.exact, self.prefixes = served_paths(app)
        self.slots = asyncio.Semaphore(self.limits.max_uploads)

    def serves(self, path: str) -> bool:
        return path in self.forms or path in self.exact or path.startswith(self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        if not self.serves(path):
            routes = ", ".join(sorted(self.forms))
            return await reply(send, 404, f"no such route {path[:100]!r}; the API routes are {routes}")
        spec = self.forms.get(path)
        if spec is None:
            return await self.app(scope, receive, normalising_send(send) if method != "HEAD" else send)
        if method != "POST":
            return await reply(send, 405, f"{path} answers POST only", [(b"allow", b"POST")])
        try:
            boundary = request_boundary(scope.get("headers") or [])
            self._check_length(scope.get("headers") or [])
        except Refusal as r:
            return await reply(send, r.status, r.message, r.headers)
        if not await self._take_slot():
            return await reply(send, 503, f"server busy: {self.limits.max_uploads} uploads in progress; retry "
                                          "shortly", [(b"retry-after", b"1")])
        try:
            try:
                body, ctype = await self._read_form(spec, boundary, receive)
            except Refusal as r:  # refused mid-body: the rest of it is not read, so the connection cannot go on
                return await reply(send, r.status, r.message, [*r.headers, (b"connection", b"close")])
            if body is None:
                return  # the client went away
            headers = [(k, v) for k, v in scope.get("headers") or []
                       if k.lower() not in (b"content-type", b"content-length", b"transfer-encoding")]
            scope = {**scope, "headers": [*headers, (b"content-type", ctype),
                                          (b"content-length", str(len(body)).encode())]}
            await self.app(scope, _replay(body, receive), normalising_send(send))
        finally:
            self.slots.release()

    def _check_length(self, headers: list[tuple[bytes, bytes]]) -> None:
        length = dict((k.lower(), v) for k, v in headers).get(b"content-length")
        if length is None:
            return
        if not length.strip().isdigit():
            raise Refusal(400, "bad content-length")
        if int(length) > self.limits.max_request_bytes:
            raise Refusal(413, f"request is {int(length):,} bytes, {self._too_big}")

    @property
    def _too_big(self) -> str:
        return f"above the limit of {self.limits.max_request_bytes:,} bytes (JAXNETS_MAX_REQUEST_BYTES)"

    async def _take_slot(self) -> bool:
        """A slot among `max_uploads`, waiting up to `queue_timeout_s` (a waiting request's body stays in
        the kernel: uvicorn stops reading a connection whose body the app has not asked for)."""
        try:
            await asyncio.wait_for(self.slots.acquire(), self.limits.queue_timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def _read_form(self, spec: FormSpec, boundary: bytes, receive: Receive) -> tuple[bytes | None, bytes]:
        """Read and check the body as it arrives; 408 when it is not all there within `read_timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.read_timeout_s
        form, size = StrictForm(spec, boundary, self.limits), 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise Refusal(408, f"request body not received within {self.limits.read_timeout_s:g} s "
                                   "(JAXNETS_READ_TIMEOUT_S)") from None
            if message["type"] != "http.request":
                return None, b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_request_bytes:
                raise Refusal(413, f"request is {self._too_big}")
            form.feed(chunk)
            if not message.get("more_body"):
                break
        return canonical_body(form.finish())


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` once, then the client's next messages (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
