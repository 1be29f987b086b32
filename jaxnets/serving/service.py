"""The HTTP service. Two BentoML services in one graph:

* `JaxnetsClassifier` (the entry point): receives uploads, enforces the size and pixel limits, decodes them
  through the checkpoint's PreprocessSpec and answers 400 with a message for anything that is not a usable
  image, before any batching. It never touches JAX.
* `JaxnetsModel`: one `batchable` API over the jitted forward function, so concurrent requests (single and
  batch alike) are merged by BentoML's adaptive batching into one padded, precompiled batch. Every bucket
  is compiled in `__init__`, before the service reports ready.

Configuration by environment: JAXNETS_MODEL_TAG (default jaxnets-classifier:latest),
JAXNETS_MAX_REQUEST_BYTES (default 10 MB), JAXNETS_MAX_PIXELS (default 40 M), JAXNETS_MAX_BATCH (default 32).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument

from ..data.preprocess import DEFAULT_MAX_PIXELS, ImageError, PreprocessSpec, to_pixels
from ..predict import describe
from .package import DEFAULT_NAME

log = logging.getLogger("jaxnets.service")

MODEL_TAG = os.environ.get("JAXNETS_MODEL_TAG", f"{DEFAULT_NAME}:latest")
MAX_REQUEST_BYTES = int(os.environ.get("JAXNETS_MAX_REQUEST_BYTES", 10 * 1024 * 1024))
MAX_PIXELS = int(os.environ.get("JAXNETS_MAX_PIXELS", DEFAULT_MAX_PIXELS))
MAX_BATCH = int(os.environ.get("JAXNETS_MAX_BATCH", 32))


def _load_model_ref():
    try:
        bentoml.models.get(MODEL_TAG)  # BentoModel() alone resolves lazily; fail here, with a hint, instead
        return bentoml.models.BentoModel(MODEL_TAG)
    except Exception as e:  # the server must not start half-working: say what is missing and how to fix it
        print(f"jaxnets: cannot load model {MODEL_TAG!r} from the BentoML store ({e}). Package one with "
              "`jaxnets package --checkpoint RUN_DIR`, or set JAXNETS_MODEL_TAG.", file=sys.stderr, flush=True)
        raise


MODEL_REF = _load_model_ref()


API_FIELDS = {"/predict": {"image", "top_k"}, "/predict_batch": {"images", "top_k"}}
_FIELD_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE)


class RequestGuard:
    """ASGI middleware in front of the API routes. It answers, before BentoML parses anything:
    413 for a body above the size limit (by Content-Length, or counted while reading a chunked body), and
    400 for multipart fields the route does not take (BentoML 1.4 would answer 500 to a binary file sent
    under a wrong field name: it json-decodes unknown fields). Everything else passes through untouched."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES):
        self.app, self.limit = app, limit

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        allowed = API_FIELDS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if allowed is None or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = f"above the limit of {self.limit:,} bytes (JAXNETS_MAX_REQUEST_BYTES)"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reply(send, 413, f"request is {int(length):,} bytes, {too_big}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._reply(send, 413, f"request is {too_big}")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/"):
            names = {m.decode("utf-8", "replace") for m in _FIELD_NAME.findall(body)}
            unknown = sorted(names - allowed)
            if unknown or not names:
                expected = " and ".join(f"'{f}'" for f in sorted(allowed))
                return await self._reply(send, 400, f"unexpected form field(s) {unknown}; this route takes {expected}")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@bentoml.service(name="jaxnets_model", traffic={"timeout": 60})
class JaxnetsModel:
    model_ref = MODEL_REF

    def __init__(self) -> None:
        from ..predict import Predictor

        self.predictor = Predictor.from_checkpoint(self.model_ref.path, which="best",
                                                   buckets=sorted({1, 8, MAX_BATCH}))
        self.predictor.warmup()
        log.info("model %s ready: %s, classes %s", MODEL_TAG, self.predictor.card["model"], self.predictor.classes)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=50)
    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W,C] → probabilities [N, classes]; N is whatever adaptive batching gathered."""
        return self.predictor.predict_pixels(np.asarray(pixels, dtype=np.uint8))


@bentoml.service(name="jaxnets_classifier", traffic={"timeout": 60})
class JaxnetsClassifier:
    model_ref = MODEL_REF
    model = bentoml.depends(JaxnetsModel)

    def __init__(self) -> None:
        card = json.loads((Path(self.model_ref.path) / "model_card.json").read_text())
        self.classes: list[str] = list(card["classes"])
        self.spec = PreprocessSpec.from_dict(card["preprocess"])

    def _pixels(self, upload: Path, what: str) -> np.ndarray:
        # the size limit is enforced once, on the whole request, by RequestGuard
        try:
            data = Path(upload).read_bytes()
        except (OSError, TypeError):
            raise InvalidArgument(f"{what}: no file received; send it as multipart form data") from None
        try:
            return to_pixels(data, self.spec, MAX_PIXELS)
        except ImageError as e:
            raise InvalidArgument(f"{what}: {e}") from None

    @bentoml.api(route="/predict")
    def predict(self, image: Path, top_k: int = 5) -> dict[str, Any]:
        """One image (multipart field `image`) → {"label", "probabilities", "top_k"}."""
        pixels = self._pixels(image, "image")[None]
        return describe(self.model.infer(pixels), self.classes, top_k)[0]

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, images: list[Path], top_k: int = 5) -> list[dict[str, Any]]:
        """Several images (multipart field `images`, repeated) → one answer each, in order."""
        if not images:
            raise InvalidArgument("images: send at least one file")
        if len(images) > 256:
            raise InvalidArgument(f"images: {len(images)} files, above the limit of 256 per request")
        pixels = np.stack([self._pixels(img, f"images[{i}]") for i, img in enumerate(images)])
        return describe(self.model.infer(pixels), self.classes, top_k)


JaxnetsClassifier.add_asgi_middleware(RequestGuard, limit=MAX_REQUEST_BYTES)
