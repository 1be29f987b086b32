"""The service against hostile or broken input, on the real server: `bentoml serve` on a loopback port, real
HTTP (requests, and raw sockets where requests would not send the garbage), checking the exact status, the
one error shape {"error": "<message>"}, and that the next good request still gets 200.

Server start-ups: one for the front-door tests (small limits set by environment), and three of
`python -m jaxnets serve` (SIGTERM, SIGINT, and a NaN model that must refuse to start)."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import requests
from brokenmodels import all_nan, infinite_first_kernel, save_changed_weights
from PIL import Image
from serving import port_free, running_server

from jaxnets.serving.local import free_port
from jaxnets.train import OptimConfig, TrainConfig, fit

pytestmark = pytest.mark.slow
MAX_REQUEST = 2_000_000
READ_TIMEOUT_S = 2.0
SERVER_ENV = {"JAXNETS_MAX_REQUEST_BYTES": str(MAX_REQUEST), "JAXNETS_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
              "JAXNETS_MAX_UPLOADS": "2", "JAXNETS_QUEUE_TIMEOUT_S": "0.5"}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


BLACK = _png(np.zeros((28, 28), np.uint8))
DIGIT = _png(np.pad(np.full((12, 4), 255, np.uint8), ((8, 8), (12, 12))))  # a bright bar: a "1"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A one-epoch LeNet-5, and two broken copies (all weights NaN; first kernel +inf), packaged in a
    private BentoML home."""
    root = tmp_path_factory.mktemp("hardening")
    run = fit(TrainConfig(model="lenet5", data="digits", epochs=1, batch_size=64, optim=OptimConfig(lr=2e-3),
                          out=str(root / "run"), quiet=True)).out
    runs = {"jaxnets-classifier": run, "jaxnets-damaged": run, "jaxnets-card-edited": run,
            "jaxnets-nan": save_changed_weights(Path(run), root / "nan", all_nan),
            "jaxnets-inf": save_changed_weights(Path(run), root / "inf", infinite_first_kernel)}
    home = root / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    script = ("import sys; from jaxnets.serving.package import package_checkpoint\n"
              "for name, run in zip(sys.argv[1::2], sys.argv[2::2]): print(package_checkpoint(run, name))")
    args = [str(x) for pair in runs.items() for x in pair]
    pkg = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    assert pkg.returncode == 0, pkg.stderr[-2000:]
    png = root / "digit.png"
    png.write_bytes(DIGIT)
    return {"root": root, "home": home, "png": png}


@pytest.fixture(scope="module")
def server(models):
    with running_server(models["home"], models["root"] / "server.log", **SERVER_ENV) as url:
        yield url


# ------------------------------------------------------------------------------------------------ helpers


def _assert_error(r: requests.Response, status: int, what: str = "") -> str:
    """Exactly `status`, with {"error": "<non-empty message>"} as application/json; returns the message."""
    assert r.status_code == status, (what, r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/json", (what, r.headers)
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str) and body["error"], \
        (what, body)
    return body["error"]


def _assert_still_serving(url: str, what: str = "", session=requests) -> None:
    r = session.post(f"{url}/predict", files={"image": ("d.png", DIGIT)}, timeout=30)
    assert r.status_code == 200, (what, r.text[:500])
    assert set(r.json()) == {"label", "probabilities", "top_k"}


def _multipart(parts: list[tuple[list[str], bytes]], boundary: str = "XyZ123") -> tuple[bytes, str]:
    """A multipart body written by hand: each part is (header lines, data)."""
    body = b"".join(f"--{boundary}\r\n".encode() + "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + data
                    + b"\r\n" for headers, data in parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _image_part(name: str = "image", filename: str = "d.png", data: bytes = DIGIT) -> tuple[list[str], bytes]:
    return [f'Content-Disposition: form-data; name="{name}"; filename="{filename}"', "Content-Type: image/png"], data


def _raw(url: str, head: bytes, body: bytes = b"", timeout: float = 20) -> tuple[int, bytes]:
    """Send bytes as they are over a socket; (status, response body)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and _complete(data):
                break
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


# ------------------------------------------------------------------------------------------------ 1. garbage


def _garbage_cases() -> dict[str, tuple[str, int, bytes, dict[str, str]]]:
    """what → (route, expected status, body, headers)."""
    good, ctype = _multipart([_image_part()])
    cases: dict[str, tuple[str, int, bytes, dict[str, str]]] = {
        "no boundary in content-type": ("/predict", 400, good, {"Content-Type": "multipart/form-data"}),
        "wrong boundary": ("/predict", 400, good, {"Content-Type": "multipart/form-data; boundary=other"}),
        "body not multipart at all": ("/predict", 400, b"hello there", {"Content-Type": ctype}),
        "truncated body": ("/predict", 400, good[: len(good) // 2], {"Content-Type": ctype}),
        "no closing boundary": ("/predict", 400, good[: good.rindex(b"--XyZ123--")], {"Content-Type": ctype}),
        "empty body": ("/predict", 400, b"", {"Content-Type": ctype}),
        "json": ("/predict", 415, b'{"image": "x"}', {"Content-Type": "application/json"}),
        "urlencoded": ("/predict", 415, b"image=hello", {"Content-Type": "application/x-www-form-urlencoded"}),
        "pickle": ("/predict", 415, b"\x80\x04N.", {"Content-Type": "application/vnd.bentoml+pickle"}),
        "no content-type": ("/predict", 415, good, {"Content-Type": ""}),
        "gzip content-encoding": ("/predict", 415, good, {"Content-Type": ctype, "Content-Encoding": "gzip"}),
    }
    many_header = _image_part()
    many_header[0].append("Content-Type: " + "x" * 5000)
    long_header = (['Content-Disposition: form-data; name="image"; filename="d.png"; ' + "x" * 5000], DIGIT)
    two_dispositions = ([*_image_part()[0], 'Content-Disposition: form-data; name="top_k"'], DIGIT)
    contradictory_params = (['Content-Disposition: form-data; name="image"; name="top_k"; filename="a.png"'], DIGIT)
    for what, parts, status in [
        ("text field where a file is expected", [(['Content-Disposition: form-data; name="image"'], b"hello")], 400),
        ("oversized part header", [long_header], 400),
        ("two content-type headers in a part", [many_header], 400),
        ("oversized file name", [_image_part(filename="a" * 1000 + ".png")], 400),
        ("two content-disposition headers", [two_dispositions], 400),
        ("a parameter given twice", [contradictory_params], 400),
        ("two parts for image", [_image_part(), _image_part()], 400),
        ("a part with no name", [(['Content-Disposition: form-data; filename="a.png"'], DIGIT)], 400),
        ("a part with an empty name", [_image_part(name="")], 400),
        ("a part without content-disposition", [(["Content-Type: image/png"], DIGIT)], 400),
        ("not form-data", [(['Content-Disposition: attachment; name="image"; filename="a"'], DIGIT)], 400),
        ("unknown field", [_image_part(), _image_part(name="picture")], 400),
        ("top_k sent as a file", [_image_part(), _image_part(name="top_k", data=b"3")], 400),
        ("top_k=abc", [_image_part(), (['Content-Disposition: form-data; name="top_k"'], b"abc")], 400),
        ("top_k twice", [_image_part(), *[(['Content-Disposition: form-data; name="top_k"'], b"3")] * 2], 400),
        ("missing image", [(['Content-Disposition: form-data; name="top_k"'], b"3")], 400),
        ("thousands of parts", [_image_part(data=b"x")] * 3000, 400),
        ("control character in file name", [_image_part(filename="a\x01.png")], 400),
    ]:
        body, ctype = _multipart(parts)
        cases[what] = ("/predict", status, body, {"Content-Type": ctype})
    body, ctype = _multipart([_image_part(name="images", data=b"x")] * 3000)
    cases["thousands of batch parts"] = ("/predict_batch", 413, body, {"Content-Type": ctype})
    return cases


def test_malformed_requests_get_4xx_with_the_error_shape_and_the_server_keeps_serving(server):
    """Over one keep-alive session: a refusal must never leave unread garbage in a connection reused later."""
    with requests.Session() as session:
        for what, (route, status, body, headers) in _garbage_cases().items():
            r = session.post(f"{server}{route}", data=body, headers=headers, timeout=30)
            _assert_error(r, status, what)
            _assert_still_serving(server, what, session)


def test_curl_style_text_field_and_raw_framing_garbage(server):
    r = requests.post(f"{server}/predict", files={"image": (None, "hello")}, timeout=30)  # curl -F image=hello
    assert "not a file" in _assert_error(r, 400)
    good, ctype = _multipart([_image_part()])
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n".encode()
    for what, extra in [("two content-types", f"Content-Type: {ctype}\r\n".encode()),
                        ("two different content-lengths", f"Content-Length: {len(good) + 5}\r\n".encode())]:
        with contextlib.suppress(ConnectionError):  # the HTTP parser may refuse this one itself
            status, body = _raw(server, head + extra + f"Content-Length: {len(good)}\r\n\r\n".encode(), good)
            assert status == 400, (what, status, body)
        _assert_still_serving(server, what)


def test_random_mutations_of_a_good_request_never_get_5xx(server):
    """The garbage nobody listed: a seeded fuzz of byte flips, cuts and splices of a valid request."""
    good, ctype = _multipart([_image_part(data=BLACK), (['Content-Disposition: form-data; name="top_k"'], b"3")])
    rng = random.Random(0)
    statuses = []
    for _ in range(120):
        body = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(body))
            op = rng.choice("flip cut dup ins")
            if op == "flip":
                body[i] = rng.randrange(256)
            elif op == "cut":
                del body[i:i + rng.randint(1, 40)]
            elif op == "dup":
                body[i:i] = body[i:i + rng.randint(1, 80)]
            else:
                body[i:i] = rng.choice([b"\r\n", b"--", b"--XyZ123", b'"', b";", b"\r\n\r\n", b"\x00"])
        r = requests.post(f"{server}/predict", data=bytes(body), headers={"Content-Type": ctype}, timeout=30)
        statuses.append(r.status_code)
        if r.status_code != 200:
            _assert_error(r, r.status_code, bytes(body[:200]))
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert statuses.count(200) < len(statuses)  # the fuzz did produce refusals
    _assert_still_serving(server)


# ------------------------------------------------------------------------------------------------ 2. one shape


def test_every_error_has_one_shape(server):
    """Unknown route, wrong method, bad values, missing field, undecodable image, too large: all {"error"}."""
    checks = [
        (requests.get(f"{server}/no/such/route", timeout=30), 404),
        (requests.post(f"{server}/predict/", files={"image": ("d.png", DIGIT)}, timeout=30), 404),
        (requests.get(f"{server}/predict", timeout=30), 405),
        (requests.put(f"{server}/predict_batch", timeout=30), 405),
        (requests.post(f"{server}/predict", files={"image": ("d.png", DIGIT)}, data={"top_k": "abc"}, timeout=30),
         400),
        (requests.post(f"{server}/predict", files={"image": ("d.png", DIGIT)}, data={"top_k": "-1"}, timeout=30),
         400),
        (requests.post(f"{server}/predict", files={"top_k": (None, "3")}, timeout=30), 400),
        (requests.post(f"{server}/predict", files={"image": ("d.png", b"not an image")}, timeout=30), 400),
        (requests.post(f"{server}/predict_batch", files=[("images", ("a.png", DIGIT)), ("images", ("b", b""))],
                       timeout=30), 400),
        (requests.post(f"{server}/predict", files={"image": ("big", b"\0" * (MAX_REQUEST + 10))}, timeout=30), 413),
    ]
    for r, status in checks:
        _assert_error(r, status, r.request.method + " " + r.request.url)
    assert requests.get(f"{server}/predict", timeout=30).headers["allow"] == "POST"
    ok = requests.post(f"{server}/predict", files={"image": ("d.png", DIGIT)}, data={"top_k": "3"}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["top_k"]) == 3
    for path in ("/livez", "/readyz", "/metrics", "/schema.json", "/"):
        assert requests.get(f"{server}{path}", timeout=30).status_code == 200, path


# ------------------------------------------------------------------------------------------------ 3. no fetching


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(DIGIT)))
        self.end_headers()
        self.wfile.write(DIGIT)

    def log_message(self, *args):
        pass


def test_urls_and_server_paths_are_never_fetched(server, models):
    counter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    threading.Thread(target=counter.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{counter.server_address[1]}/x.png"
        for value in (url, f'"{url}"', f"file://{models['png']}", str(models["png"]), "/etc/passwd"):
            r = requests.post(f"{server}/predict", files={"image": (None, value)}, timeout=30)
            _assert_error(r, 400, value)
            r = requests.post(f"{server}/predict_batch", files=[("images", (None, value))], timeout=30)
            _assert_error(r, 400, value)
            r = requests.post(f"{server}/predict", data={"image": value}, timeout=30)  # urlencoded
            _assert_error(r, 415, value)
            r = requests.post(f"{server}/predict", data=value, headers={"Content-Type": "application/json"},
                              timeout=30)
            _assert_error(r, 415, value)
        time.sleep(0.5)
        assert _CountingHandler.hits == []
        _assert_still_serving(server)
    finally:
        counter.shutdown()
        counter.server_close()


# ------------------------------------------------------------------------------------------------ 4. slow, many


def _stalled_upload(url: str, send_every_s: float | None = None) -> socket.socket:
    """A connection that sends the headers and 100 bytes of a 100 kB body, then stalls (or trickles)."""
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ123\r\n"
              b"Content-Length: 100000\r\n\r\n--XyZ123\r\n" + b"x" * 90)
    if send_every_s:
        def trickle():
            with contextlib.suppress(OSError):
                for _ in range(100):
                    time.sleep(send_every_s)
                    s.sendall(b"x")
        threading.Thread(target=trickle, daemon=True).start()
    return s


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            data += chunk
            if _complete(data):
                break
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


def test_slow_uploads_get_408_and_too_many_at_once_get_503(server):
    """JAXNETS_MAX_UPLOADS=2: two stalled uploads take both slots, a third request waits
    JAXNETS_QUEUE_TIMEOUT_S then gets 503; the stalled ones get 408 after JAXNETS_READ_TIMEOUT_S, a trickling
    one too, and then the server answers again."""
    start = time.monotonic()
    stalled = [_stalled_upload(server), _stalled_upload(server, send_every_s=0.2)]
    time.sleep(0.3)
    busy = requests.post(f"{server}/predict", files={"image": ("d.png", DIGIT)}, timeout=30)
    assert "busy" in _assert_error(busy, 503)
    assert busy.headers["retry-after"] == "1"
    for s in stalled:
        status, body = _read_response(s)
        s.close()
        assert status == 408, body
        assert b"JAXNETS_READ_TIMEOUT_S" in body
    assert time.monotonic() - start < READ_TIMEOUT_S + 4
    _assert_still_serving(server)
    # a chunked body above the limit is cut off while it is read
    head = b'--XyZ123\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    chunked = requests.post(f"{server}/predict", data=iter([head] + [b"x" * 500_000] * 5),
                            headers={"Content-Type": "multipart/form-data; boundary=XyZ123"}, timeout=30)
    _assert_error(chunked, 413)
    _assert_still_serving(server)


# ------------------------------------------------------------------------------------------------ 5. metrics


def test_unknown_paths_do_not_grow_metrics(server):
    requests.get(f"{server}/nope", timeout=30)
    before = requests.get(f"{server}/metrics", timeout=30).text
    names = [f"/scan-{random.Random(i).getrandbits(64):x}" for i in range(300)]
    with requests.Session() as session:
        for i, name in enumerate(names):
            r = session.post(f"{server}{name}", timeout=30) if i % 2 else session.get(f"{server}{name}", timeout=30)
            assert r.status_code == 404
    after = requests.get(f"{server}/metrics", timeout=30).text
    assert not any(name in after for name in names)
    assert len(after) < len(before) * 1.05, (len(before), len(after))


# ------------------------------------------------------------------------------------------------ 6, 7. jaxnets serve


def _jaxnets_serve(models, tag: str, log: Path) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(models["home"]), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxnets", "serve", "--port", str(port), "--model-tag", tag],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", port


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def _tree(pid: int) -> list[int]:
    """pid and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
    return alive


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_jaxnets_serve_answers_503_for_non_finite_output_and_stops_its_whole_tree(models, tmp_path, signum):
    """The model's first kernel is +inf: a black image still gets probabilities (and the warm-up passes), a
    bright pixel gives NaN, answered 503 with the error shape, never 200. Then a signal to `jaxnets serve`
    stops every process of the server, promptly, and frees the port."""
    log = tmp_path / "serve.log"
    proc, url, port = _jaxnets_serve(models, "jaxnets-inf:latest", log)
    try:
        _wait_ready(proc, url, log)
        tree = _tree(proc.pid)
        assert len(tree) >= 3, tree  # jaxnets serve, bentoml serve, its workers
        black = requests.post(f"{url}/predict", files={"image": ("b.png", BLACK)}, timeout=30)
        assert black.status_code == 200 and np.isfinite(list(black.json()["probabilities"].values())).all()
        assert "non-finite" in _assert_error(requests.post(f"{url}/predict", files={"image": ("d.png", DIGIT)},
                                                           timeout=30), 503)
        batch = requests.post(f"{url}/predict_batch", files=[("images", ("b.png", BLACK)), ("images", ("d", DIGIT))],
                              timeout=30)
        assert "[1]" in _assert_error(batch, 503)
        start = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 128 + signum, log.read_text()[-2000:]
        assert time.monotonic() - start < 25
        deadline = time.monotonic() + 5
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(tree) == [], _alive(tree)
        assert port_free(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            for pid in _alive(_tree(proc.pid)):
                os.kill(pid, signal.SIGKILL)


def test_a_model_with_nan_weights_refuses_to_start(models, tmp_path):
    log = tmp_path / "serve.log"
    proc, url, port = _jaxnets_serve(models, "jaxnets-nan:latest", log)
    try:
        code = proc.wait(timeout=120)
        text = log.read_text(errors="replace")
        assert code == 1, text[-2000:]
        line = next(x for x in text.splitlines() if x.startswith("jaxnets: model"))
        assert "'jaxnets-nan:latest'" in line and "non-finite" in line
        time.sleep(1)
        assert port_free(port)
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/readyz", timeout=2)
            pytest.fail("something still answers on the port")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_model_card_edited_in_the_store_stops_start_up(models, tmp_path):
    card = next((models["home"] / "models" / "jaxnets-card-edited").glob("*/model_card.json"))
    card.write_text(card.read_text().replace('"0"', '"zero"', 1))  # still a valid card: only the copy tells
    log = tmp_path / "serve.log"
    proc, _, port = _jaxnets_serve(models, "jaxnets-card-edited:latest", log)
    try:
        code = proc.wait(timeout=120)
        text = log.read_text(errors="replace")
        assert code != 0, text[-2000:]
        line = next(x for x in text.splitlines() if "jaxnets: model" in x)
        assert "model_card.json differs from the card packaged with the model" in line
        assert "Traceback" not in text  # the one line says it all
        assert port_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_model_damaged_in_the_store_stops_start_up_naming_the_file(models, tmp_path):
    store = next((models["home"] / "models" / "jaxnets-damaged").glob("*/*/model/d"))
    array_file = max((p for p in store.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(array_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    array_file.write_bytes(bytes(data))
    log = tmp_path / "serve.log"
    proc, _, port = _jaxnets_serve(models, "jaxnets-damaged:latest", log)
    try:
        code = proc.wait(timeout=120)
        text = log.read_text(errors="replace")
        assert code != 0, text[-2000:]
        line = next(x for x in text.splitlines() if "jaxnets: model" in x)
        assert "damaged" in line and array_file.name in line and "corrupted" in line
        assert "Traceback" not in text
        assert port_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
