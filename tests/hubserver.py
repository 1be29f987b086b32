"""A tiny Hugging Face hub on 127.0.0.1 for the download tests (set HF_ENDPOINT to its url).

It answers what `huggingface_hub.hf_hub_download` asks for a file: HEAD and GET on
/{repo}/resolve/{revision}/{file}, with X-Repo-Commit (the commit the revision points at), ETag / X-Linked-Etag
(a git-lfs file's SHA-256, the name the cache keeps it by) and X-Linked-Size, as the real hub does; 404 with the
hub's X-Error-Code for a repository it does not have. It records each request (method, path, Authorization).
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field


@dataclass
class HubFile:
    body: bytes
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    sha256: str | None = None  # what the hub says the file's SHA-256 is (default: the body's own)
    headers: dict[str, str] = field(default_factory=dict)


class HubServer:
    def __init__(self):
        self.files: dict[str, HubFile] = {}  # "owner/name/resolve/main/model.safetensors" → file
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                key = self.path.split("?")[0].lstrip("/")
                file = hub.files.get(key)
                if file is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound" if not any(
                        k.split("/resolve/")[0] == key.split("/resolve/")[0] for k in hub.files) else "EntryNotFound")
                    self.send_header("X-Error-Message", "not here")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                digest = file.sha256 or hashlib.sha256(file.body).hexdigest()
                self.send_response(200)
                self.send_header("X-Repo-Commit", file.commit)
                self.send_header("ETag", f'"{digest}"')
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("X-Linked-Size", str(len(file.body)))
                self.send_header("Content-Length", str(len(file.body)))
                for k, v in file.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if with_body:
                    self.wfile.write(file.body)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
