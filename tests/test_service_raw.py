"""`POST /predict` with one image as the whole body (Content-Type: image/...), on the real server over real HTTP:
the same JSON as the multipart form for every format, under the same limits (body size, pixels, read time,
uploads at once), and a 4xx {"error"} for garbage: wrong or unknown types, empty, truncated, too big, a
content-type that lies, bad query parameters."""

from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
import requests
from imagefiles import bomb_png
from PIL import Image
from serving import package_lenet, running_server

pytestmark = pytest.mark.slow
MAX_REQUEST = 500_000
READ_TIMEOUT_S = 2.0
SERVER_ENV = {"JAXNETS_MAX_REQUEST_BYTES": str(MAX_REQUEST), "JAXNETS_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
              "JAXNETS_MAX_UPLOADS": "2", "JAXNETS_QUEUE_TIMEOUT_S": "0.5", "JAXNETS_MAX_PIXELS": "4000000"}
DIGIT = np.pad(np.full((12, 4), 255, np.uint8), ((8, 8), (12, 12)))


def _encoded(fmt: str, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(DIGIT).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


FORMATS = {"image/png": _encoded("PNG"), "image/jpeg": _encoded("JPEG"), "image/webp": _encoded("WEBP", "RGB"),
           "image/gif": _encoded("GIF"), "image/bmp": _encoded("BMP"), "image/tiff": _encoded("TIFF")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    packaged = package_lenet(root)
    with running_server(packaged["home"], root / "server.log", **SERVER_ENV) as url:
        yield url


def _raw(url: str, data, ctype: str | None, query: str = "", route: str = "/predict") -> requests.Response:
    headers = {"Content-Type": ctype} if ctype else {}
    return requests.post(f"{url}{route}{query}", data=data, headers=headers, timeout=30)


def _form(url: str, data: bytes, **fields) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": ("x", data)}, data=fields, timeout=30)


def _error(r: requests.Response, status: int, what: str = "") -> str:
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/json", (what, r.headers)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], (what, body)
    return body["error"]


def _still_serving(url: str, what: str = "") -> None:
    assert _raw(url, FORMATS["image/png"], "image/png").status_code == 200, what


def test_a_raw_body_answers_exactly_as_the_form(server):
    for ctype, data in FORMATS.items():
        raw, form = _raw(server, data, ctype), _form(server, data)
        assert raw.status_code == form.status_code == 200, (ctype, raw.text, form.text)
        assert raw.headers["content-type"] == form.headers["content-type"] == "application/json"
        assert raw.json() == form.json(), ctype
        assert set(raw.json()) == {"label", "probabilities", "top_k"}
    png = FORMATS["image/png"]
    three = _raw(server, png, "image/png", "?top_k=3")
    assert three.json() == _form(server, png, top_k="3").json() and len(three.json()["top_k"]) == 3
    chunked = _raw(server, iter([png[:50], png[50:]]), "image/png")  # Transfer-Encoding: chunked
    assert chunked.json() == _form(server, png).json()
    for alias in ("image/jpg", "IMAGE/JPEG", "image/jpeg; charset=binary"):
        assert _raw(server, FORMATS["image/jpeg"], alias).json() == _form(server, FORMATS["image/jpeg"]).json()


def test_raw_garbage_gets_4xx_json_and_the_server_keeps_serving(server, tmp_path):
    png, jpeg = FORMATS["image/png"], FORMATS["image/jpeg"]
    cases = [
        ("text/plain", b"hello", "", 415, "multipart/form-data"),
        ("application/octet-stream", png, "", 415, "image/png"),
        (None, png, "", 415, "content-type"),
        ("image/svg+xml", b"<svg onload=alert(1)>", "", 415, "image type"),
        ("image/png", b"", "", 400, "empty"),
        ("image/png", png[: len(png) // 2], "", 400, "image"),  # truncated: begins as a PNG
        ("image/png", jpeg, "", 400, "not image/png"),  # the content-type lies
        ("image/jpeg", b"this is not a picture", "", 400, "not image/jpeg"),
        ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "", 400, "image"),
        ("image/png", bomb_png(tmp_path / "bomb.png").read_bytes(), "", 400, "pixels"),
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_REQUEST + 10), "", 413, "limit"),
        ("image/png", png, "?top_k=abc", 400, "top_k"),
        ("image/png", png, "?top_k=0", 400, "top_k"),
        ("image/png", png, "?top_k=1&top_k=2", 400, "twice"),
        ("image/png", png, "?image=http://127.0.0.1/x.png", 400, "unexpected"),
        ("image/png", png, "?top_k=" + "9" * 100, 400, "top_k"),
        ("image/png", png, "?top_k=%ff", 400, "query"),
        ("multipart/form-data; boundary=XyZ", png, "", 400, "multipart"),
    ]
    for ctype, data, query, status, word in cases:
        message = _error(_raw(server, data, ctype, query), status, (ctype, query, data[:20]))
        assert word.lower() in message.lower(), (ctype, query, message)
        _still_serving(server, (ctype, query))
    big = iter([b"\x89PNG\r\n\x1a\n"] + [b"\0" * 100_000] * 7)  # chunked: no length to refuse it up front
    _error(_raw(server, big, "image/png"), 413, "chunked too big")
    _error(_raw(server, png, "image/png", route="/predict_batch"), 415, "batch takes no raw body")
    _still_serving(server)


def _stalled_raw(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
              + FORMATS["image/png"][:20])
    return s


def test_raw_bodies_have_the_read_timeout_and_the_upload_slots(server):
    start = time.monotonic()
    stalled = [_stalled_raw(server), _stalled_raw(server)]  # JAXNETS_MAX_UPLOADS=2
    time.sleep(0.3)
    assert "busy" in _error(_raw(server, FORMATS["image/png"], "image/png"), 503)
    for s in stalled:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b'{"error": "request body not received within' in data
    assert time.monotonic() - start < READ_TIMEOUT_S + 4
    _still_serving(server)
