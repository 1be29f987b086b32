"""The HTTP service. Two BentoML services in one graph:

* `JaxnetsClassifier` (the entry point): behind the front door (guard.py, wrapped around its whole ASGI app,
  outside BentoML's own middlewares), which refuses every request that is not a well-formed upload of the
  right fields, bounded in size, time and number, and gives every error the one shape {"error": message}.
  The service then decodes the uploads through the checkpoint's PreprocessSpec and answers 400 with a
  message for anything that is not a usable image, before any batching. It never runs JAX, and refuses to
  return non-finite probabilities (503). The model is checksum-verified at server start, never at import.
* `JaxnetsModel`: one `batchable` API over the jitted forward function, so concurrent requests (single and
  batch alike) are merged by BentoML's adaptive batching into one padded, precompiled batch. Every bucket
  is compiled in `__init__`, before the service reports ready, and a model whose warm-up output is not
  finite (NaN weights) stops the server with one line naming it.

Configuration by environment: JAXNETS_MODEL_TAG (default jaxnets-classifier:latest),
JAXNETS_MAX_REQUEST_BYTES (default 10 MiB), JAXNETS_MAX_PIXELS (default 40 M), JAXNETS_MAX_BATCH (default 32),
JAXNETS_MAX_LATENCY_MS (default 3000: how long a request may wait in the batching queue before a 503),
JAXNETS_GC_INTERVAL_S (default 10: the workers collect garbage on this timer, not on allocation counts),
and the front door's JAXNETS_READ_TIMEOUT_S, JAXNETS_MAX_UPLOADS, JAXNETS_QUEUE_TIMEOUT_S (see guard.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import io
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.preprocess import DEFAULT_MAX_PIXELS, ImageError, to_pixels
from ..extras import require
from ..inference.answers import describe, non_finite_rows
from ..inference.card import read_card
from ..integrity import CheckpointError, verify_packaged
from ..report.figures import image_png
from ..report.overlay import overlay
from .formspec import FormSpec, Limits, Part, env_number, positive_int, short_text, text
from .guard import DirectHandler, FrontDoor, Page, error_body
from .package import DEFAULT_NAME

aiohttp, bentoml = require("serve", "aiohttp"), require("serve", "bentoml")  # core install: MissingExtra, one line
BentoMLException, InvalidArgument = bentoml.exceptions.BentoMLException, bentoml.exceptions.InvalidArgument

log = logging.getLogger("jaxnets.service")

MODEL_TAG = os.environ.get("JAXNETS_MODEL_TAG", f"{DEFAULT_NAME}:latest")
LIMITS = Limits.from_env()
MAX_REQUEST_BYTES = LIMITS.max_request_bytes
MAX_PIXELS = env_number("JAXNETS_MAX_PIXELS", DEFAULT_MAX_PIXELS)
MAX_BATCH = env_number("JAXNETS_MAX_BATCH", 32)
# how long a request may wait in the model's batching queue before BentoML refuses it (503, "overloaded"). Its
# load shedding cancels the request mid-flight, which also drops the connection between the two services; at
# 50 ms a busy 2-core machine shed requests (and dropped connections) it would have answered in a few more, and
# at 1 s it shed the requests that arrived during a garbage collection of the model worker (a second or two).
MAX_LATENCY_MS = env_number("JAXNETS_MAX_LATENCY_MS", 3000)
MAX_BATCH_FILES = 256
# uploads of at most this many pixels in all decode in the front's event loop (under a millisecond); larger ones in
# a thread, so that one big image never holds up the other requests
DECODE_INLINE_PIXELS = 256 * 256

# what each API route takes; the front door refuses anything else before BentoML parses it
FORMS = {
    "/predict": FormSpec("image", text_fields={"top_k": positive_int}, raw=True),
    "/predict_batch": FormSpec("images", max_files=MAX_BATCH_FILES, text_fields={"top_k": positive_int}),
    "/explain": FormSpec("image", text_fields={"class_name": short_text}, string_fields=frozenset({"class_name"})),
}
# the page at / (served by the front door itself: static, no JAX, no BentoML code on the way)
PAGES = {"/": Page((Path(__file__).parent / "page.html").read_bytes())}
# routes the front door answers itself once the classifier has started (guard.py, "direct routes")
DIRECT_ROUTES: dict[str, DirectHandler] = {}


class ModelUnavailable(BentoMLException):
    """The packaged model cannot be served: missing from the store, or damaged. A BentoMLException, so that
    `bentoml serve` (and `jaxnets serve` through it) shows its one line, without a traceback, and exits 1."""


def verified_model(tag: str) -> Any:
    """The stored model `tag`, its files verified against their checksums (ModelUnavailable otherwise)."""
    try:
        model = bentoml.models.get(tag)
    except Exception as e:  # the server must not start half-working: say what is missing and how to fix it
        raise ModelUnavailable(f"jaxnets: cannot load model {tag!r} from the BentoML store ({e}). Package one with "
                               "`jaxnets package --checkpoint RUN_DIR`, or set JAXNETS_MODEL_TAG.") from None
    try:
        verify_packaged(model.path, read_card(model.path).packaged_step)
    except (CheckpointError, OSError) as e:
        raise ModelUnavailable(f"jaxnets: model {tag!r} is damaged, not serving it: {e}") from None
    return model


class VerifiedModel(bentoml.models.BentoModel):
    """BentoML's reference to a stored model, resolved only once verified. Nothing happens at import: importing
    this module without a packaged model is fine (tests, tools, `bentoml build` of another model). BentoML
    resolves it when `bentoml serve` starts (before any worker), and each worker when it first reads it."""

    def resolve(self, base_path: Any = None) -> Any:
        if base_path is not None:  # a copy into another store (bento build): BentoML's own path
            return super().resolve(base_path)
        return verified_model(str(self.tag))


MODEL_REF = VerifiedModel(MODEL_TAG)


def _model_path(service: Any) -> str:
    """The verified model's directory for a worker's `__init__`; a model that became unavailable after the
    server started stops the whole server with its one line (raising alone would have the worker restarted)."""
    try:
        return service.model_ref.path
    except ModelUnavailable as e:
        print(e, file=sys.stderr, flush=True)
        _stop_the_server(str(e))
        raise


class GuardedService(bentoml.Service):
    """A BentoML service whose ASGI app is wrapped in the front door. Wrapping the whole app (rather than
    `add_asgi_middleware`, which puts a middleware inside BentoML's metrics middleware) is what keeps
    unknown paths out of /metrics and lets the door answer before any BentoML code reads the request."""

    def to_asgi(self, is_main: bool = True) -> Any:
        door = FrontDoor(super().to_asgi(is_main), FORMS, LIMITS, PAGES)
        door.direct = DIRECT_ROUTES
        return door


def _stop_the_server(message: str) -> None:
    """Shut the whole server down from a worker that must not serve. Raising alone is not enough: BentoML's
    process manager (`bentoml serve`, this worker's parent) restarts a worker whose start-up failed, forever,
    and the server would sit there never ready. So: SIGTERM to the manager, which stops and does not restart
    workers; SIGKILL to the other workers, which are still starting (the front waits up to a minute for this
    service to be ready and ignores SIGTERM meanwhile) and have served nothing. The manager then exits 0, so
    the reason also goes to JAXNETS_FATAL_FILE when set (`jaxnets serve` sets it and exits 1)."""
    import psutil  # a BentoML dependency

    if fatal_file := os.environ.get("JAXNETS_FATAL_FILE"):
        with contextlib.suppress(OSError):
            Path(fatal_file).write_text(message + "\n")
    me = psutil.Process()
    parent = me.parent()
    if parent is None or not any("bentoml" in part for part in parent.cmdline()):
        return  # not under `bentoml serve`: raising is all a worker can do
    parent.terminate()
    for sibling in parent.children():
        if sibling.pid != me.pid:
            with contextlib.suppress(psutil.Error):
                sibling.kill()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# a connection the model server closed under the client (BentoML issue #4971: the client keeps idle connections
# 15 s, the server 5 s): the call never reached the model, so sending it again is safe. Timeouts are not retried.
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


async def _retried_once(method: Any, *args: Any) -> Any:
    """`await method(*args)` on the model service, sent a second time when its pooled connection was closed."""
    try:
        return await method(*args)
    except DROPPED as e:
        log.warning("the model service connection dropped (%s); trying once more", e)
        return await method(*args)


def _non_finite(bad: list[int], total: int) -> str:
    """Log and describe a model answer holding NaN or infinity: it is never served as a 200."""
    log.error("model %s returned non-finite probabilities for %d of %d image(s)", MODEL_TAG, len(bad), total)
    return (f"the model returned non-finite probabilities for image(s) {bad[:10]}; no answer can be given (the "
            "model is broken for this input)")


def _declared_pixels(uploads: list[bytes]) -> int:
    """Width × height summed over the uploads, read from their headers (no decoding): what decoding will cost.
    An upload whose header cannot be read counts as large (its decode goes to a thread and reports the error)."""
    total = 0
    for data in uploads:
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except Exception:  # any unreadable header: let the real decode say what is wrong, off the loop
            return DECODE_INLINE_PIXELS + 1
    return total


def _decode(data: bytes, what: str, spec: Any) -> np.ndarray:
    """One upload → uint8 pixels through the checkpoint's preprocessing; a 400 (InvalidArgument) naming `what`
    for anything that is not a usable image."""
    try:
        return to_pixels(data, spec, MAX_PIXELS)
    except ImageError as e:
        raise InvalidArgument(f"{what}: {e}") from None


def _decode_all(uploads: list[bytes], names: list[str], spec: Any) -> np.ndarray:
    return np.stack([_decode(data, name, spec) for data, name in zip(uploads, names, strict=True)])


GC_INTERVAL_S = env_number("JAXNETS_GC_INTERVAL_S", 10.0, float, 0.1)


def _freeze_startup_objects() -> None:
    """Take the garbage collector off the request path: start-up objects (JAX, the compiled model, BentoML) are
    frozen out of its reach, and instead of collecting whenever allocations cross its thresholds — which, in the
    middle of serving, paused a worker for up to ~150 ms a few times per second of load and set the p99 latency
    (BENCHMARKS.md, "Service") — it collects every `JAXNETS_GC_INTERVAL_S` seconds (10) from a timer thread, so
    that reference cycles are still freed and memory stays bounded."""
    gc.collect()
    gc.freeze()
    gc.disable()

    def collect() -> None:
        while True:
            time.sleep(GC_INTERVAL_S)
            gc.collect()

    threading.Thread(target=collect, name="jaxnets-gc", daemon=True).start()


class NonFiniteModelError(RuntimeError):
    """The model's warm-up output is NaN or infinite: its weights are broken, so it must not be served."""


# BentoML's client to this service replaces its HTTP session every `max_requests` calls (default 100) or
# `max_age` seconds, closing the old one with requests still in flight on it: at a few hundred requests/s that
# failed calls ("Connection closed", "Server disconnected") and left some waiting until the timeout. One session
# for the life of the worker; the few connections the server closes while idle are retried (_retried_once).
# Its timeout is 30 s, not the front's 60: BentoML's model worker keeps each request's future and trace context
# alive until that timeout has passed (measured: memory grows for one timeout's worth of requests, then stays;
# at 900 requests/s that was 330 MB at 60 s), and every garbage collection walks them.
@bentoml.service(name="jaxnets_model", traffic={"timeout": 30},
                 runner_connection={"max_requests": 2**62, "max_age": 1e12}, logging={"access": {"enabled": False}})
class JaxnetsModel:
    model_ref = MODEL_REF

    def __init__(self) -> None:
        from ..inference.predictor import Predictor
        from ..runtime import tune_process  # jaxnets owns the worker: XLA's threads share the main heap
        tune_process()
        self.predictor = Predictor.from_checkpoint(_model_path(self), which="best",
                                                   buckets=sorted({1, 8, MAX_BATCH}))
        self.predictor.warmup()
        self._check_finite()
        self.explains = self._warm_explain()
        log.info("model %s ready: %s, classes %s", MODEL_TAG, self.predictor.card.model, self.predictor.classes)
        _freeze_startup_objects()

    def _warm_explain(self) -> bool:
        """Compile the explanation for one image before the service is ready; a model that cannot be explained
        still serves predictions (its /explain answers 503 with the reason)."""
        try:
            self.predictor.explain_pixels(np.zeros((1, *self.predictor.spec.shape), np.uint8), [0])
            return True
        except Exception as e:  # any failure here only turns /explain off, with its reason
            log.error("model %s cannot be explained (%s): /explain is off", MODEL_TAG, e)
            self.explain_error = f"{type(e).__name__}: {str(e)[:200]}"
            return False

    def _check_finite(self) -> None:
        """Refuse to start on a model whose warm-up output (a batch of black images, as `warmup` compiles
        with) is not finite: NaN weights. One clear line, and the server stops instead of answering nonsense.
        A model broken only for some inputs is caught per request by the front (503)."""
        probes = np.zeros((1, *self.predictor.spec.shape), np.uint8)
        if non_finite_rows(self.predictor.predict_pixels(probes)):
            message = (f"jaxnets: model {MODEL_TAG!r} ({self.predictor.card.model}, step {self.predictor.step}) gives "
                       "non-finite probabilities on its warm-up input: its weights are broken (NaN or inf); "
                       "not serving it. Package a good checkpoint.")
            print(message, file=sys.stderr, flush=True)
            _stop_the_server(message)
            raise NonFiniteModelError(message)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W,C] → probabilities [N, classes]; N is whatever adaptive batching gathered."""
        return self.predictor.predict_pixels(np.asarray(pixels, dtype=np.uint8))

    @bentoml.api
    def explain(self, pixels: np.ndarray, class_index: int) -> np.ndarray:
        """uint8 [1,H,W,C] and the class to explain → its map, float32 [1,H,W] in [0, 1] (inference/explain.py)."""
        if not self.explains:
            raise RuntimeError(f"this model cannot be explained: {self.explain_error}")
        maps, _ = self.predictor.explain_pixels(np.asarray(pixels, dtype=np.uint8), [int(class_index)])
        return maps


@bentoml.service(name="jaxnets_classifier", traffic={"timeout": 60}, service_class=GuardedService)
class JaxnetsClassifier:
    model_ref = MODEL_REF
    model = bentoml.depends(JaxnetsModel)

    def __init__(self) -> None:
        card = read_card(_model_path(self))
        self.classes: list[str] = list(card.classes)
        self.spec = card.preprocess
        DIRECT_ROUTES["/predict"] = functools.partial(self._answer_direct, field="image")
        DIRECT_ROUTES["/predict_batch"] = functools.partial(self._answer_direct, field="images")
        _freeze_startup_objects()

    async def _answer_direct(self, parts: list[Part], field: str) -> tuple[int, bytes]:
        """The same decode, model call and answers as `predict`/`predict_batch` below, without BentoML's second
        parse of the form and its temporary files: the answer to one image for field "image", a list for
        "images"."""
        uploads = [bytes(part.data) for part in parts if part.name == field]
        top_k = next((int(text(bytes(p.data))) for p in parts if p.name == "top_k"), 5)
        names = [field] if field == "image" else [f"images[{i}]" for i in range(len(uploads))]
        try:
            if _declared_pixels(uploads) <= DECODE_INLINE_PIXELS:
                pixels = _decode_all(uploads, names, self.spec)
            else:  # a big decode must not hold up every other request on this loop
                pixels = await asyncio.to_thread(_decode_all, uploads, names, self.spec)
        except InvalidArgument as e:
            return 400, error_body(str(e))
        probs = np.asarray(await _retried_once(self.model.to_async.infer, pixels))
        if bad := non_finite_rows(probs):
            return 503, error_body(_non_finite(bad, len(probs)))
        answers = describe(probs, self.classes, top_k)
        return 200, json.dumps(answers[0] if field == "image" else answers).encode()

    @staticmethod
    def _call_model(method: Any, *args: Any) -> Any:
        """A call to the model service from a worker thread, tried a second time when its pooled connection turns
        out closed (see `_retried_once`)."""
        try:
            return method(*args)
        except DROPPED as e:
            log.warning("the model service connection dropped (%s); trying once more", e)
            return method(*args)

    def _pixels(self, upload: Path, what: str) -> np.ndarray:
        # sizes, fields and file-ness were checked by the front door: `upload` is a file the client sent
        try:
            data = Path(upload).read_bytes()
        except (OSError, TypeError):
            raise InvalidArgument(f"{what}: no file received; send it as multipart form data") from None
        return _decode(data, what, self.spec)

    def _answers(self, pixels: np.ndarray, top_k: int, ctx: bentoml.Context) -> list[dict[str, Any]]:
        """The model's answers, or one {"error"} with 503 when any probability is not finite: a NaN is never
        served as a 200 (JSON would carry it as null, or as invalid JSON)."""
        probs = np.asarray(self._call_model(self.model.infer, pixels))
        if bad := non_finite_rows(probs):
            ctx.response.status_code = 503
            return [{"error": _non_finite(bad, len(probs))}]
        return describe(probs, self.classes, top_k)

    @bentoml.api(route="/predict")
    def predict(self, image: Path, ctx: bentoml.Context, top_k: int = 5) -> dict[str, Any]:
        """One image (multipart field `image`) → {"label", "probabilities", "top_k"}."""
        return self._answers(self._pixels(image, "image")[None], top_k, ctx)[0]

    @bentoml.api(route="/explain")
    def explain(self, image: Path, ctx: bentoml.Context, class_name: str | None = None) -> dict[str, Any]:
        """One image (multipart field `image`) → {"label", "class", "probability", "overlay", "map"}: where the
        model looked for `class_name` (default: the predicted class), as PNG data URIs — the map over the image the
        model saw, and the map alone (8-bit grey)."""
        if class_name is not None and class_name not in self.classes:
            raise InvalidArgument(f"class_name: {class_name[:100]!r} is not one of the model's classes "
                                  f"({', '.join(self.classes[:50])})")
        pixels = self._pixels(image, "image")[None]
        answers = self._answers(pixels, 1, ctx)
        if "error" in answers[0]:
            return answers[0]
        chosen = answers[0]["label"] if class_name is None else class_name
        try:
            heat = np.asarray(self._call_model(self.model.explain, pixels, self.classes.index(chosen)),
                              np.float32)[0]
        except Exception as e:  # the model service's failure is a 503 with its reason, never a 500
            log.error("explain failed: %s", e)
            ctx.response.status_code = 503
            return {"error": f"no explanation could be made for this image: {str(e)[:300]}"}
        if not np.isfinite(heat).all():
            ctx.response.status_code = 503
            return {"error": "the model's explanation is not finite for this image"}
        return {"label": answers[0]["label"], "class": chosen, "probability": answers[0]["probabilities"][chosen],
                "overlay": _data_uri(image_png(overlay(pixels[0], heat), at_least=224)),
                "map": _data_uri(image_png(np.rint(heat * 255).astype(np.uint8)[..., None], at_least=224))}

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, images: list[Path], ctx: bentoml.Context, top_k: int = 5) -> list[dict[str, Any]]:
        """Several images (multipart field `images`, repeated) → one answer each, in order."""
        if not images:
            raise InvalidArgument("images: send at least one file")
        if len(images) > MAX_BATCH_FILES:
            raise InvalidArgument(f"images: {len(images)} files, above the limit of {MAX_BATCH_FILES} per request")
        pixels = np.stack([self._pixels(img, f"images[{i}]") for i, img in enumerate(images)])
        return self._answers(pixels, top_k, ctx)
