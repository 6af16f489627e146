"""``mnist-pipeline serve``: a page to draw digits on, and a JSON API, over the trained model.

:func:`create_app` builds the FastAPI application around a model loaded once:

- ``GET /``: the drawing page (``static/index.html``, ``page.js``, ``page.css``; nothing is
  loaded from the internet);
- ``POST /predict``: a PNG or JPEG picture (multipart field ``file``, or the raw bytes with
  ``Content-Type: image/png`` / ``image/jpeg``) goes through
  :func:`mnist_pipeline.app.digit_image.picture_to_digit`, the code path of ``mnist-pipeline
  predict``; JSON ``{"pixels": ...}`` holds one 28x28 array or a batch N x 28 x 28 of pixels,
  read as predict reads ``.npy`` arrays (:func:`mnist_pipeline.app.predict.as_pixel_batch`);
- ``POST /v1/models/mnist:predict`` (and ``GET /v1/models/mnist``): TensorFlow Serving's REST
  API, ``{"instances": [28x28, ...]}`` in, ``{"predictions": [[10 probabilities], ...]}`` out,
  so that clients written for TF Serving work unchanged;
- ``GET /health``, and FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``, whose scripts
  come from the ``fastapi-offline`` package rather than a CDN.

Bad input gets a 4xx answer ``{"detail": "<one line>"}`` (``{"error": ...}`` on the TF
Serving route, as TF Serving answers); see :data:`STATUS_OF`. The model is an ONNX file on
onnxruntime or a ``.keras`` file (:mod:`mnist_pipeline.inference`): TensorFlow is imported for
the second only.

Requests that arrive together share one model call (:class:`ModelBatcher`): while the model
runs on one batch, the next requests queue, and the next call takes all of them.

What any client may cost is bounded, whatever it sends: bodies by :class:`GuardRequests`
(size, a deadline for the whole body, a few at a time), connections by uvicorn's
``limit_concurrency`` (:data:`MAX_CONNECTIONS`), decoded pictures by one
:class:`digit_image.DecodeBudget` shared by all requests, and JSON parsing by counting the
body's structure first (:func:`json_field`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_pipeline import __version__, inference, uncertainty
from mnist_pipeline.app import digit_image, predict
from mnist_pipeline.app.digit_image import IMAGE_SIZE

STATIC_DIR = Path(__file__).parent / "static"
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: one place, its format

# A request body larger than this is refused (413) before it is read: a phone photo is a few
# MB, and a batch of MAX_BATCH_IMAGES digits as JSON about 1-3 MB.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# What the server holds at once, whatever its clients do (measured by
# benchmarks/serve_hostile.py, asserted by tests/test_serve_load.py):
# - connections and requests in flight (uvicorn's limit_concurrency); more: 503 at once;
MAX_CONNECTIONS = 128
# - requests with a body, being read or answered; more wait for a turn (at most their body
#   deadline, then 503): MAX_BODIES x MAX_REQUEST_BYTES (134 MB) of bodies at most;
MAX_BODIES = 16
# - the whole body must have arrived this many seconds after the request began, or 408 and
#   the connection is closed: a stalled or a slow sender (under 8 MiB / 30 s) is cut off;
BODY_TIMEOUT_SECONDS = 30.0
# - pictures being decoded hold this many bytes of pixels at most, all together
#   (digit_image.DecodeBudget): a 40-megapixel RGBA PNG costs all of it, and decodes alone.
DECODE_BUDGET_BYTES = 320 * 1024 * 1024
# Digits per JSON request, and per model call when requests are batched together.
MAX_BATCH_IMAGES = 256
MAX_MODEL_BATCH = 512
# onnxruntime threads per model call: the batcher runs one call at a time in one worker
# thread, beside the event loop that reads and parses requests; one thread is the most
# images per CPU-second, and leaves the other cores to the rest (benchmarks/README.md).
MODEL_THREADS = 1
PROBABILITY_DECIMALS = 6
# The model name in TensorFlow Serving's REST routes (/v1/models/<name>:predict).
TF_SERVING_NAME = "mnist"
# A JSON body is counted before it is parsed: building Python lists is what costs (8 MiB of
# `[[]],` took 2.4 s of parsing, holding the GIL, so every request waited). Twice what
# MAX_BATCH_IMAGES digits need (so that a batch a little too big is told its size), at most:
# arrays and objects (`[`, `{`), and values (`,`, `:`). Parsing then costs ~0.1 s at most.
MAX_JSON_CONTAINERS = 2 * MAX_BATCH_IMAGES * (IMAGE_SIZE + 1) + 16
MAX_JSON_SEPARATORS = 2 * MAX_BATCH_IMAGES * IMAGE_SIZE * IMAGE_SIZE + 64

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
PICTURE_TYPES = ("image/png", "image/jpeg")

# HTTP status of each kind of refusal (the README lists them).
STATUS_OF = {
    "unreadable": 400,  # not valid JSON or multipart; a truncated or corrupt picture; no digit
    "too_slow": 408,  # the body did not arrive within BODY_TIMEOUT_SECONDS
    "too_large": 413,  # body over MAX_REQUEST_BYTES; picture over digit_image's pixel limit
    "unsupported": 415,  # neither JSON, multipart nor PNG/JPEG
    "invalid": 422,  # JSON of the wrong shape or type, NaN, out of range, empty or too big a batch
    "busy": 503,  # MAX_BODIES bodies in progress for the whole body deadline
}


class Prediction(BaseModel):
    """The model's answer for one digit."""

    label: int = Field(description="the predicted digit, 0-9")
    confidence: float = Field(description="the probability of `label` (calibrated)")
    uncertain: bool = Field(description="true when the input does not look like a "
                            "handwritten digit or the model is unsure: do not trust `label`")
    probabilities: list[float] = Field(description="probability of each digit 0-9, in order")
    digit: list[list[int]] | None = Field(
        default=None,
        description="single-digit requests only: the 28x28 picture the model saw, "
        "pixels 0..255 (light digit on black), rounded",
    )


class BatchPrediction(BaseModel):
    """The model's answers for a batch, in the order of the batch."""

    predictions: list[Prediction]


class PixelsRequest(BaseModel):
    """JSON input (documentation only: the body is read by :func:`pixels_from_json`)."""

    pixels: list[list[float]] | list[list[list[float]]] = Field(
        description="one 28x28 array, or a batch N x 28 x 28 (N <= "
        f"{MAX_BATCH_IMAGES}), light digit on black, MNIST-style, on the 0..255 scale "
        "(integers or floats alike; [0, 1] values must be multiplied by 255). A blank digit "
        "is refused (400) as a blank picture is.",
    )


class InstancesRequest(BaseModel):
    """TensorFlow Serving's row format (documentation only: read by
    :func:`instances_from_json`)."""

    instances: list[list[list[float]]] = Field(
        description=f"N x 28 x 28 (N <= {MAX_BATCH_IMAGES}) pixels, read as `pixels` of "
        "`POST /predict`")


class TFServingPrediction(BaseModel):
    predictions: list[list[float]] = Field(
        description="per instance, the probability of each digit 0-9, in order")


class TFServingError(BaseModel):
    error: str = Field(description="why the request was refused, one line")


class HealthAnswer(BaseModel):
    status: str
    model: str
    version: str
    requests: int = Field(description="images predicted since start")
    model_calls: int = Field(description="model calls since start (batches)")


class Refused(HTTPException):
    """A request the server will not answer: ``kind`` is a key of :data:`STATUS_OF`."""

    def __init__(self, kind: str, reason: str):
        super().__init__(STATUS_OF[kind], reason)


# ---------------------------------------------------------------------------------------
# Inputs -> (N, 28, 28) float32 pixels 0..255


def picture_digit(data: bytes, budget: digit_image.DecodeBudget | None = None) -> np.ndarray:
    """The bytes of a PNG/JPEG picture of one digit -> MNIST-style float32 (28, 28).

    :func:`digit_image.picture_to_digit` does all the work, exactly as for ``mnist-pipeline
    predict``, including its limits (PNG or JPEG only; the pixel count is checked from the
    header, before decoding), its decoding cost reserved from ``budget``. Raises
    :class:`Refused`: 413 for a picture too large, else 400.
    """
    if not data:
        raise Refused("unreadable", "empty upload: expected a PNG or JPEG picture")
    try:
        return digit_image.picture_to_digit(data, budget=budget)
    except digit_image.PictureError as error:
        reason = str(error)
        too_large = "too large" in reason or "decompression bomb" in reason
        raise Refused("too_large" if too_large else "unreadable", reason) from None


def pixels_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """A JSON body ``{"pixels": 28x28 or N x 28 x 28}`` -> float32 0..255 (N, 28, 28), and
    whether it was a batch (N x 28 x 28, even with N = 1) rather than one 28x28 array.

    Numbers are read as ``mnist-pipeline predict`` reads a ``.npy`` array
    (:func:`predict.as_pixel_batch`): on the 0..255 scale, a blank digit refused. Raises
    :class:`Refused`.
    """
    value = json_field(body, "pixels", '{"pixels": 28x28 or N x 28 x 28}')
    return pixels_from_value(value, "pixels", batch_only=False)


def instances_from_json(body: bytes) -> np.ndarray:
    """TensorFlow Serving's row format ``{"instances": [28x28, ...]}`` -> float32 (N, 28, 28),
    read as :func:`pixels_from_json` reads a batch. Raises :class:`Refused`."""
    value = json_field(body, "instances", '{"instances": [28x28, ...]}')
    return pixels_from_value(value, "instances", batch_only=True)[0]


def json_field(body: bytes, field: str, expected: str) -> Any:
    """The value of ``field`` in a JSON object body, or :class:`Refused`.

    Before parsing, the body's brackets and separators are counted (a C loop over the bytes,
    milliseconds for 8 MiB): more than :data:`MAX_JSON_CONTAINERS` arrays and objects, or
    :data:`MAX_JSON_SEPARATORS` values, is refused unparsed (422), so that no body costs
    more than ~0.1 s of parsing.
    """
    containers = body.count(b"[") + body.count(b"{")
    separators = body.count(b",") + body.count(b":")
    if containers > MAX_JSON_CONTAINERS or separators > MAX_JSON_SEPARATORS:
        raise Refused("invalid", f"JSON body of {containers:,} arrays and {separators:,} "
                      f"values: more than {MAX_BATCH_IMAGES} digits of 28x28 need, over the "
                      "limit (refused unparsed)")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 included
        raise Refused("unreadable", f"not valid JSON ({error})") from None
    if not isinstance(document, dict) or field not in document:
        raise Refused("invalid", f"expected a JSON object {expected}")
    return document[field]


def pixels_from_value(value: Any, name: str, batch_only: bool) -> tuple[np.ndarray, bool]:
    """Nested lists of numbers -> float32 0..255 (N, 28, 28) and whether they were a batch."""
    try:
        array = np.array(value)
    except (ValueError, OverflowError, RecursionError):
        raise Refused("invalid", f"{name}: nested lists of different lengths") from None
    if array.shape == (0,):
        raise Refused("invalid", f"{name}: empty batch")
    if array.dtype.kind not in "iuf":
        found = {"b": "booleans", "U": "strings"}.get(array.dtype.kind,
                                                      "nulls, objects or huge integers")
        raise Refused("invalid", f"{name}: expected numbers 0..255, found {found}")
    shapes = (3,) if batch_only else (2, 3)
    if array.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE) or array.ndim not in shapes:
        expected = "a list of 28x28 arrays" if batch_only else \
            "a 28x28 array or a batch N x 28 x 28"
        raise Refused("invalid", f"{name}: expected {expected}, "
                      f"got shape {'x'.join(map(str, array.shape))}")
    batch = array.ndim == 3
    if not batch:
        array = array[np.newaxis]
    if len(array) > MAX_BATCH_IMAGES:
        raise Refused("invalid", f"{name}: batch of {len(array)} images is over the limit "
                      f"of {MAX_BATCH_IMAGES}")
    try:
        return predict.as_pixel_batch(array, name), batch
    except predict.BlankDigitError as error:  # as a blank picture is refused
        raise Refused("unreadable", str(error)) from None
    except predict.InputError as error:
        raise Refused("invalid", str(error)) from None


# ---------------------------------------------------------------------------------------
# The model, shared by concurrent requests


class ModelBatcher:
    """Runs ``predict_fn`` on the images of all requests waiting, in one call.

    Requests queue while the model is busy; each call takes everything queued (up to
    ``max_images``), after waiting ``window_seconds`` for more. The model runs in one worker
    thread, so the event loop keeps accepting and parsing requests meanwhile; with one
    client at a time every call has one request and nothing waits.
    """

    def __init__(self, predict_fn: Callable[[np.ndarray], np.ndarray],
                 max_images: int = MAX_MODEL_BATCH, window_seconds: float = 0.0):
        if max_images < 1 or window_seconds < 0:
            raise ValueError("max_images must be >= 1 and window_seconds >= 0")
        self.predict_fn = predict_fn
        self.max_images = max_images
        self.window_seconds = window_seconds
        self.model_calls = 0
        self.images = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, 10) for ``pixels`` (n, 28, 28); more than ``max_images`` run alone."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first request, or a test client's new event loop
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._serve_batches(self._queue))
        future = loop.create_future()
        self._queue.put_nowait((pixels, future))
        return await future

    async def _serve_batches(self, queue: asyncio.Queue) -> None:
        carried = None  # a request that did not fit into the previous batch
        while True:
            batch = [carried or await queue.get()]
            carried = None
            if self.window_seconds:
                await asyncio.sleep(self.window_seconds)
            count = len(batch[0][0])
            while not queue.empty():
                item = queue.get_nowait()
                if count + len(item[0]) > self.max_images:
                    carried = item
                    break
                batch.append(item)
                count += len(item[0])
            await self._run(batch)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        pixels = np.concatenate([item[0] for item in batch])
        loop = asyncio.get_running_loop()
        try:
            probabilities = await loop.run_in_executor(self._executor, self.predict_fn, pixels)
        except Exception as error:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.model_calls += 1
        self.images += len(pixels)
        offset = 0
        for item_pixels, future in batch:
            if not future.done():  # done: the client went away
                future.set_result(probabilities[offset:offset + len(item_pixels)])
            offset += len(item_pixels)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def answer(probabilities: np.ndarray, uncertain: bool = False) -> dict[str, Any]:
    """One row of 10 probabilities (and the :func:`mnist_pipeline.uncertainty.uncertain`
    flag of its digit) -> ``{label, confidence, uncertain, probabilities}``."""
    label = int(np.argmax(probabilities))
    return {
        "label": label,
        "confidence": round(float(probabilities[label]), PROBABILITY_DECIMALS),
        "uncertain": bool(uncertain),
        "probabilities": [round(float(p), PROBABILITY_DECIMALS) for p in probabilities],
    }


# ---------------------------------------------------------------------------------------
# The application


class RequestTooLarge(Exception):
    """The request body grew past MAX_REQUEST_BYTES while it was being read."""


class BodyTimeout(Exception):
    """The request body had not all arrived by its deadline."""


class GuardRequests:
    """ASGI middleware: what any client may cost the server, and headers on every answer.

    - a ``Content-Length`` over ``max_bytes`` is answered 413 at once, unread; a body
      without one (chunked) raises :class:`RequestTooLarge` from ``receive`` as soon as it
      passes the limit: the same 413;
    - a request with a body waits for one of ``max_bodies`` turns (503 when none came by its
      deadline), so at most ``max_bodies x max_bytes`` of bodies are held, however many
      clients send at once; while it waits, uvicorn stops reading its connection;
    - its body must have arrived ``body_timeout`` seconds after the request began (turn
      included), else 408: a stalled or slow sender is cut off, its connection closed;
    - a client that goes away mid-body is logged in one line, not a traceback;
    - every answer says ``X-Content-Type-Options: nosniff``, and a redirect's ``Location``
      is a path (``/static/``), never built from the request's ``Host`` header.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES,
                 max_bodies: int = MAX_BODIES, body_timeout: float = BODY_TIMEOUT_SECONDS):
        if max_bodies < 1 or body_timeout <= 0:
            raise ValueError("max_bodies must be >= 1 and body_timeout > 0")
        self.app = app
        self.max_bytes = max_bytes
        self.max_bodies = max_bodies
        self.body_timeout = body_timeout
        self._turns: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": safe_headers(message.get("headers", []))}
            await send(message)

        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if declared.isdigit() and int(declared) > self.max_bytes:
            await refusal(scope, "too_large", self.over_the_limit())(scope, receive, guarded_send)
            return
        if not chunked and (not declared.isdigit() or int(declared) == 0):
            await self.app(scope, receive, guarded_send)  # no body: nothing to hold
            return

        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first request, or a test client's new event loop
            self._loop, self._turns = loop, asyncio.Semaphore(self.max_bodies)
        turns = self._turns
        deadline = loop.time() + self.body_timeout
        try:
            await asyncio.wait_for(turns.acquire(), self.body_timeout)
        except TimeoutError:
            await refusal(scope, "busy", f"busy: {self.max_bodies} uploads in progress for "
                          f"{self.body_timeout:g} s; try again", {"retry-after": "5"}
                          )(scope, receive, guarded_send)
            return
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge
                complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, guarded_send)
        except (BodyTimeout, RequestTooLarge) as error:
            if started:
                raise
            kind, reason = ("too_large", self.over_the_limit()) \
                if isinstance(error, RequestTooLarge) else \
                ("too_slow", f"the request body did not arrive within {self.body_timeout:g} s")
            await refusal(scope, kind, reason)(scope, receive, guarded_send)
        except ClientDisconnect:
            client = scope.get("client") or ("?", 0)
            LOG.info("%s:%s - %s %s: the client went away after %s of its body", *client,
                     scope["method"], scope["path"], f"{received:,} bytes")
        finally:
            turns.release()

    def over_the_limit(self) -> str:
        return f"request body over the limit of {self.max_bytes:,} bytes"


def safe_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``X-Content-Type-Options: nosniff``, and a ``Location`` made a path
    (Starlette builds redirects from the request's Host header, which the client chose)."""
    safe = []
    for name, value in headers:
        if name.lower() == b"location":
            parts = urllib.parse.urlsplit(value.decode("latin-1"))
            value = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")
                                            ).encode("latin-1")
        if name.lower() != b"x-content-type-options":
            safe.append((name, value))
    safe.append((b"x-content-type-options", b"nosniff"))
    return safe


def refusal(scope: Scope, kind: str, reason: str,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusal before or instead of the application: ``{"detail": reason}`` (``{"error"}``
    on TF Serving's routes), and the connection closed, since its body is left unread."""
    key = "error" if scope.get("path", "").startswith("/v1/") else "detail"
    return JSONResponse({key: reason}, status_code=STATUS_OF[kind],
                        headers={"connection": "close", **(headers or {})})


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            JSON_TYPE: {"schema": PixelsRequest.model_json_schema()},
            MULTIPART_TYPE: {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary",
                                        "description": "a PNG or JPEG picture of one digit"}},
            }},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def create_app(model: str | Path | inference.Classifier, *,
               max_model_batch: int = MAX_MODEL_BATCH, window_seconds: float = 0.0,
               body_timeout: float = BODY_TIMEOUT_SECONDS, max_bodies: int = MAX_BODIES,
               decode_budget_bytes: int = DECODE_BUDGET_BYTES) -> FastAPI:
    """The application around ``model``: a ``.onnx`` or ``.keras`` file, or a loaded
    :class:`mnist_pipeline.inference.Classifier`.

    The model takes raw pixels 0..255 (N, 28, 28) and returns probabilities (N, 10), as
    every model file of the pipeline; it is loaded once here. ``max_model_batch`` and
    ``window_seconds`` tune :class:`ModelBatcher` (1 and 0: one request per model call);
    ``body_timeout`` and ``max_bodies``, :class:`GuardRequests`; ``decode_budget_bytes``,
    the pixels that pictures decoded at once may hold (:class:`digit_image.DecodeBudget`).
    """
    classifier = (model if isinstance(model, inference.Classifier)
                  else inference.load(model, MODEL_THREADS))
    model_name = str(classifier.path) if classifier.path else classifier.kind
    batcher = ModelBatcher(classifier.run_batch, max_model_batch, window_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.close()

    app = FastAPIOffline(
        title="MNIST digits",
        version=__version__,
        description="Classify handwritten digits with the trained model. `/` is a page "
        "to draw on; `POST /predict` takes a PNG/JPEG picture or JSON pixels.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.decode_budget = budget = digit_image.DecodeBudget(decode_budget_bytes)
    app.add_middleware(GuardRequests, max_bytes=MAX_REQUEST_BYTES, max_bodies=max_bodies,
                       body_timeout=body_timeout)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={
            # Belt and braces for "works offline": the page may load nothing from elsewhere.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:",
        })

    @app.get("/health", response_model=HealthAnswer)
    async def health() -> dict[str, Any]:
        """Whether the server is up, which model it serves and how much it has done."""
        return {"status": "ok", "model": model_name,
                "version": __version__, "requests": batcher.images,
                "model_calls": batcher.model_calls}

    @app.post(
        "/predict",
        response_model=Prediction | BatchPrediction,
        response_model_exclude_none=True,
        openapi_extra=PREDICT_OPENAPI,
        responses={status: {"description": reason} for status, reason in (
            (400, "unreadable JSON, multipart or picture (a corrupt PNG included); a blank "
                  "picture or a blank digit of JSON pixels"),
            (408, f"the body did not arrive within {body_timeout:g} s"),
            (413, f"body over {MAX_REQUEST_BYTES:,} bytes, or a picture of too many pixels "
                  "(a decompression bomb)"),
            (415, "neither JSON, multipart, PNG nor JPEG"),
            (422, "pixels of the wrong shape or type, NaN, out of 0..255, an empty batch "
                  f"or over {MAX_BATCH_IMAGES} images"),
            (503, f"{max_bodies} uploads in progress all along the body's deadline"),
        )},
    )
    async def predict_digits(request: Request) -> dict[str, Any]:
        """Classify one picture of a digit, one 28x28 array of pixels, or a batch of them.

        A picture (multipart field `file`, or the raw body as `image/png`/`image/jpeg`) is
        made MNIST-style as `mnist-pipeline predict` does: inverted if it is dark on light,
        cropped to the digit, fitted into 20x20 and centered by its center of mass in 28x28.
        JSON `{"pixels": ...}` is taken as MNIST-style already. A single digit is answered
        with one prediction and the 28x28 picture the model saw; a batch (N x 28 x 28) with
        `{"predictions": [...]}`.
        """
        batch = False
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == JSON_TYPE:
            pixels, batch = await run_in_threadpool(pixels_from_json, await request.body())
        elif media_type == MULTIPART_TYPE:
            async with request.form(max_files=1, max_fields=8) as form:  # closes its files
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise Refused("unreadable", 'multipart: expected a file field named "file"')
                data = await upload.read()
            pixels = (await run_in_threadpool(picture_digit, data, budget))[np.newaxis]
        elif media_type in PICTURE_TYPES:
            pixels = (await run_in_threadpool(picture_digit, await request.body(), budget)
                      )[np.newaxis]
        else:
            raise Refused("unsupported", f"content type {media_type or 'missing'}: send "
                          "application/json, multipart/form-data, image/png or image/jpeg")
        probabilities = await request.app.state.batcher.predict(pixels)
        flags = uncertainty.uncertain(pixels, probabilities)
        if not batch:
            return {**answer(probabilities[0], flags[0]),
                    "digit": np.rint(pixels[0]).astype(int).tolist()}
        return {"predictions": [answer(row, flag)
                                for row, flag in zip(probabilities, flags, strict=True)]}

    @app.get(f"/v1/models/{TF_SERVING_NAME}", tags=["TensorFlow Serving"])
    async def tf_serving_status() -> dict[str, Any]:
        """The model's status as TensorFlow Serving reports it: one version, available."""
        return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    @app.post(
        f"/v1/models/{TF_SERVING_NAME}:predict",
        response_model=TFServingPrediction,
        tags=["TensorFlow Serving"],
        openapi_extra={"requestBody": {"required": True, "content": {
            JSON_TYPE: {"schema": InstancesRequest.model_json_schema()}}}},
        responses={status: {"description": reason, "model": TFServingError}
                   for status, reason in ((400, "not valid JSON"),
                                          (413, f"body over {MAX_REQUEST_BYTES:,} bytes"),
                                          (415, "not application/json"),
                                          (422, "instances of the wrong shape or type, NaN, "
                                                f"out of 0..255, empty or over "
                                                f"{MAX_BATCH_IMAGES}"))},
    )
    async def tf_serving_predict(request: Request) -> Any:
        """TensorFlow Serving's REST predict API (row format), so that clients written for
        TF Serving work unchanged: `{"instances": [28x28, ...]}` of pixels 0..255 in,
        `{"predictions": [[10 probabilities], ...]}` out. Same limits and reading of the
        pixels as `POST /predict`; errors are answered as TF Serving does, `{"error": ...}`.
        """
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != JSON_TYPE:
                raise Refused("unsupported", f"content type {media_type or 'missing'}: send "
                              "application/json")
            pixels = await run_in_threadpool(instances_from_json, await request.body())
        except Refused as refused:
            return JSONResponse({"error": refused.detail}, status_code=refused.status_code)
        probabilities = await request.app.state.batcher.predict(pixels)
        return {"predictions": np.round(probabilities.astype(np.float64),
                                        PROBABILITY_DECIMALS).tolist()}

    return app


def run(model: str | Path | inference.Classifier, host: str, port: int,
        body_timeout: float = BODY_TIMEOUT_SECONDS) -> None:
    """Serve ``model`` with uvicorn on ``host:port`` until interrupted, at most
    :data:`MAX_CONNECTIONS` connections and requests at once (more: 503)."""
    import uvicorn

    return_freed_memory()
    uvicorn.run(create_app(model, body_timeout=body_timeout), host=host, port=port,
                log_level="info", timeout_graceful_shutdown=5,
                limit_concurrency=MAX_CONNECTIONS)


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Have glibc's malloc map blocks of ``threshold`` bytes and more on their own, so that
    freeing them gives them back to the system. Its default threshold grows to 32 MiB as
    large blocks are freed; decoded pictures (Pillow allocates 16 MiB blocks) then stay in
    the heap, fragmented, and the server keeps hundreds of MB it no longer uses. Does
    nothing where the C library is not glibc."""
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3  # glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_mmap_threshold, threshold)
    except (OSError, AttributeError):
        pass
