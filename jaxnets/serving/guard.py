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
  ever reaches BentoML's string-to-file coercion. A route whose FormSpec says `raw` also takes one image as
  the whole body (Content-Type image/png, image/jpeg, ...; its text fields in the query string): read under
  the same deadline, size limit and slots, refused when empty or not beginning as its type says, and turned
  into the very parts the form would give, so both are answered by the same code.
* what BentoML gets: a freshly written multipart body holding only the validated parts, never the client's.
* how many: at most `max_uploads` API requests are read or processed at once; the next ones wait up to
  `queue_timeout_s`, then get 503, so memory is bounded by about max_uploads × max_request_bytes.
* answers: every error response (BentoML's too) leaves as {"error": "<message>"}, application/json.
* direct routes: a route the service has registered a handler for (`FrontDoor.direct`, filled by the service when
  it starts) is answered from the validated parts by that handler, without the second multipart parse, the
  temporary file and the IO layer of BentoML's own route: that is where most of a small request's time went
  (BENCHMARKS.md, "Service"). Until a handler is registered, and for every other route, BentoML answers. The
  door writes their access-log lines itself (logger "bentoml.access"); BentoML's request metrics do not count them.

It imports neither JAX nor BentoML: it is plain ASGI over python-multipart (a BentoML dependency).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from .formspec import FormSpec, Limits, Part, Refusal, text
from .multipart import StrictForm, canonical_body, query_parts, raw_image_part, request_format

log = logging.getLogger("jaxnets.service")
access = logging.getLogger("bentoml.access")  # BentoML configures it: our lines appear beside its own

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# validated parts → (status, JSON body); an error status must come with {"error": message}
DirectHandler = Callable[[list[Part]], Awaitable[tuple[int, bytes]]]



# every JSON answer the door writes: class names and messages may hold markup, and no browser may sniff them as HTML
JSON_HEADERS = ((b"content-type", b"application/json"), (b"x-content-type-options", b"nosniff"))


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def reply(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer {"error": message} with `status`."""
    body = error_body(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def error_message(status: int, body: bytes) -> str:
    """The message in any error body BentoML or Starlette writes: {"error"}, [{"error"}], a pydantic
    validation error ({"error", "detail": [{"loc", "msg"}]}), {"detail"}, or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = text(body).strip()
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
        replaced = (b"content-type", b"content-length", b"x-content-type-options")
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in replaced]
        await send({**held, "headers": [*headers, *JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


# ------------------------------------------------------------------------------------------------ pages


NONE = "'none'"


class Page:
    """A self-contained HTML page the door serves itself (GET and HEAD only), with a Content-Security-Policy that
    lets it run its own inline script (by hash) and talk to this server, and nothing else: no external script,
    style, font, image or frame could load even if one crept in."""

    def __init__(self, html: bytes):
        self.html = html
        scripts = re.findall(rb"<script>(.*?)</script>", html, flags=re.S)
        hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
        self.csp = (f"default-src 'none'; script-src {hashes or NONE}; style-src 'unsafe-inline'; img-src data: blob:; "
                    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'").encode()

    async def answer(self, method: str, send: Send) -> None:
        if method not in ("GET", "HEAD"):
            return await reply(send, 405, "this page answers GET only", [(b"allow", b"GET, HEAD")])
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(self.html)).encode()),
            (b"content-security-policy", self.csp), (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else self.html})


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

    def __init__(self, app: ASGIApp, forms: dict[str, FormSpec], limits: Limits | None = None,
                 pages: dict[str, Page] | None = None):
        self.app, self.forms, self.pages = app, forms, pages or {}
        self.limits = limits or Limits.from_env()
        self.exact, self.prefixes = served_paths(app)
        self.slots = asyncio.Semaphore(self.limits.max_uploads)
        self.direct: dict[str, DirectHandler] = {}  # filled by the service once it has started

    def serves(self, path: str) -> bool:
        return path in self.forms or path in self.pages or path in self.exact or path.startswith(self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        if not self.serves(path):
            routes = ", ".join(sorted(self.forms))
            return await reply(send, 404, f"no such route {path[:100]!r}; the API routes are {routes}")
        if path in self.pages:
            return await self.pages[path].answer(method, send)
        spec = self.forms.get(path)
        if spec is None:
            return await self.app(scope, receive, normalising_send(send) if method != "HEAD" else send)
        if method != "POST":
            return await reply(send, 405, f"{path} answers POST only", [(b"allow", b"POST")])
        try:
            kind, framing = request_format(scope.get("headers") or [], spec)
            self._check_length(scope.get("headers") or [])
            fields = query_parts(scope.get("query_string") or b"", spec, self.limits.max_text_field_bytes) \
                if kind == "raw" else []
        except Refusal as r:
            return await reply(send, r.status, r.message, r.headers)
        if not await self._take_slot():
            return await reply(send, 503, f"server busy: {self.limits.max_uploads} uploads in progress; retry "
                                          "shortly", [(b"retry-after", b"1")])
        try:
            try:
                parts = await (self._read_form(spec, framing, receive) if kind == "multipart"  # type: ignore[arg-type]
                               else self._read_raw(spec, framing, fields, receive))  # type: ignore[arg-type]
            except Refusal as r:  # refused mid-body: the rest of it is not read, so the connection cannot go on
                return await reply(send, r.status, r.message, [*r.headers, (b"connection", b"close")])
            if parts is None:
                return  # the client went away
            if handler := self.direct.get(path):
                return await answer_directly(handler, parts, send, scope)
            body, ctype = canonical_body(parts, spec.string_fields)
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
        the kernel: uvicorn stops reading a connection whose body the app has not asked for). A free slot is
        taken at once, whatever the timeout (wait_for with 0 would cancel even an immediate acquire)."""
        if not self.slots.locked():
            await self.slots.acquire()
            return True
        try:
            await asyncio.wait_for(self.slots.acquire(), self.limits.queue_timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def _read_form(self, spec: FormSpec, boundary: bytes, receive: Receive) -> list[Part] | None:
        """Read and check a multipart body as it arrives (None: the client left)."""
        form = StrictForm(spec, boundary, self.limits)
        return form.finish() if await self._receive_body(receive, form.feed) else None

    async def _read_raw(self, spec: FormSpec, image_type: str, fields: list[Part],
                        receive: Receive) -> list[Part] | None:
        """Read a raw image body (None: the client left): the same parts a form with that one file would give, so
        it is answered exactly as the form is."""
        body = bytearray()
        if not await self._receive_body(receive, body.extend):
            return None
        return [raw_image_part(spec, image_type, bytes(body)), *fields]

    async def _receive_body(self, receive: Receive, feed: Callable[[bytes], Any]) -> bool:
        """Hand the body to `feed` as it arrives, within `max_request_bytes` (413) and `read_timeout_s` (408);
        False when the client went away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.read_timeout_s
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise Refusal(408, f"request body not received within {self.limits.read_timeout_s:g} s "
                                   "(JAXNETS_READ_TIMEOUT_S)") from None
            if message["type"] != "http.request":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_request_bytes:
                raise Refusal(413, f"request is {self._too_big}")
            feed(chunk)
            if not message.get("more_body"):
                return True


async def answer_directly(handler: DirectHandler, parts: list[Part], send: Send, scope: Scope) -> None:
    """The handler's answer; a handler that fails answers 503 with the reason, never a 500 or a traceback.
    One access-log line per request, as BentoML writes for the routes it answers."""
    started = time.perf_counter()
    try:
        status, body = await handler(parts)
    except Exception as e:  # the handler's own errors are answers; anything else is the model side failing
        status, body = 503, error_body(f"the model service could not answer ({type(e).__name__}); retry shortly")
        log.exception("%s failed", scope.get("path"))  # the details stay in the server's log
    client = scope.get("client") or ("-", 0)
    access.info("%s:%s (method=POST,path=%s) (status=%d,length=%d) %.3fms", client[0], client[1], scope.get("path"),
                status, len(body), 1e3 * (time.perf_counter() - started))
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
