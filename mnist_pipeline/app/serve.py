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
"""

from __future__ import annotations

import asyncio
import json
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_pipeline import __version__, inference
from mnist_pipeline.app import digit_image, predict
from mnist_pipeline.app.digit_image import IMAGE_SIZE

STATIC_DIR = Path(__file__).parent / "static"

# A request body larger than this is refused (413) before it is read: a phone photo is a few
# MB, and a batch of MAX_BATCH_IMAGES digits as JSON about 1-3 MB.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Digits per JSON request, and per model call when requests are batched together.
MAX_BATCH_IMAGES = 256
MAX_MODEL_BATCH = 512
PROBABILITY_DECIMALS = 6
# The model name in TensorFlow Serving's REST routes (/v1/models/<name>:predict).
TF_SERVING_NAME = "mnist"

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
PICTURE_TYPES = ("image/png", "image/jpeg")

# HTTP status of each kind of refusal (the README lists them).
STATUS_OF = {
    "unreadable": 400,  # not valid JSON or multipart; a truncated or corrupt picture; no digit
    "too_large": 413,  # body over MAX_REQUEST_BYTES; picture over digit_image's pixel limit
    "unsupported": 415,  # neither JSON, multipart nor PNG/JPEG
    "invalid": 422,  # JSON of the wrong shape or type, NaN, out of range, empty or too big a batch
}


class Prediction(BaseModel):
    """The model's answer for one digit."""

    label: int = Field(description="the predicted digit, 0-9")
    confidence: float = Field(description="the probability of `label`")
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
        f"{MAX_BATCH_IMAGES}), light digit on black, MNIST-style: integers 0..255, or "
        "floats, read on the [0, 1] scale when none is above 1.0 (as predict reads .npy)",
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


def picture_digit(data: bytes) -> np.ndarray:
    """The bytes of a PNG/JPEG picture of one digit -> MNIST-style float32 (28, 28).

    :func:`digit_image.picture_to_digit` does all the work, exactly as for ``mnist-pipeline
    predict``, including its limits (PNG or JPEG only; the pixel count is checked from the
    header, before decoding). Raises :class:`Refused`: 413 for a picture too large, else 400.
    """
    if not data:
        raise Refused("unreadable", "empty upload: expected a PNG or JPEG picture")
    try:
        return digit_image.picture_to_digit(data)
    except digit_image.PictureError as error:
        reason = str(error)
        too_large = "too large" in reason or "decompression bomb" in reason
        raise Refused("too_large" if too_large else "unreadable", reason) from None


def pixels_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """A JSON body ``{"pixels": 28x28 or N x 28 x 28}`` -> float32 0..255 (N, 28, 28), and
    whether it was a batch (N x 28 x 28, even with N = 1) rather than one 28x28 array.

    Numbers are read as ``mnist-pipeline predict`` reads a ``.npy`` array
    (:func:`predict.as_pixel_batch`). Raises :class:`Refused`.
    """
    value = json_field(body, "pixels", '{"pixels": 28x28 or N x 28 x 28}')
    return pixels_from_value(value, "pixels", batch_only=False)


def instances_from_json(body: bytes) -> np.ndarray:
    """TensorFlow Serving's row format ``{"instances": [28x28, ...]}`` -> float32 (N, 28, 28),
    read as :func:`pixels_from_json` reads a batch. Raises :class:`Refused`."""
    value = json_field(body, "instances", '{"instances": [28x28, ...]}')
    return pixels_from_value(value, "instances", batch_only=True)[0]


def json_field(body: bytes, field: str, expected: str) -> Any:
    """The value of ``field`` in a JSON object body, or :class:`Refused`."""
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


def answer(probabilities: np.ndarray) -> dict[str, Any]:
    """One row of 10 probabilities -> ``{label, confidence, probabilities}``."""
    label = int(np.argmax(probabilities))
    return {
        "label": label,
        "confidence": round(float(probabilities[label]), PROBABILITY_DECIMALS),
        "probabilities": [round(float(p), PROBABILITY_DECIMALS) for p in probabilities],
    }


# ---------------------------------------------------------------------------------------
# The application


class RequestTooLarge(Exception):
    """The request body grew past MAX_REQUEST_BYTES while it was being read."""


class LimitRequestBody:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413, declared or streamed.

    A ``Content-Length`` over the limit is answered at once, unread; a body without one
    (chunked) raises :class:`RequestTooLarge` from ``receive`` as soon as it passes the
    limit, which the application turns into the same 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge
            return message

        await self.app(scope, limited_receive, send)


def too_large_response(max_bytes: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over the limit of {max_bytes:,} bytes"},
                        status_code=STATUS_OF["too_large"])


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
               ) -> FastAPI:
    """The application around ``model``: a ``.onnx`` or ``.keras`` file, or a loaded
    :class:`mnist_pipeline.inference.Classifier`.

    The model takes raw pixels 0..255 (N, 28, 28) and returns probabilities (N, 10), as
    every model file of the pipeline; it is loaded once here. ``max_model_batch`` and
    ``window_seconds`` tune :class:`ModelBatcher` (1 and 0: one request per model call).
    """
    classifier = model if isinstance(model, inference.Classifier) else inference.load(model)
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
    app.add_middleware(LimitRequestBody, max_bytes=MAX_REQUEST_BYTES)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(RequestTooLarge)
    async def request_too_large(_request: Request, _error: RequestTooLarge) -> JSONResponse:
        return too_large_response(MAX_REQUEST_BYTES)

    @app.get("/", include_in_schema=False)
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
            (400, "unreadable JSON, multipart or picture; a blank picture"),
            (413, f"body over {MAX_REQUEST_BYTES:,} bytes, or a picture of too many pixels "
                  "(a decompression bomb)"),
            (415, "neither JSON, multipart, PNG nor JPEG"),
            (422, "pixels of the wrong shape or type, NaN, out of 0..255, an empty batch "
                  f"or over {MAX_BATCH_IMAGES} images"),
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
            pixels = (await run_in_threadpool(picture_digit, data))[np.newaxis]
        elif media_type in PICTURE_TYPES:
            pixels = (await run_in_threadpool(picture_digit, await request.body()))[np.newaxis]
        else:
            raise Refused("unsupported", f"content type {media_type or 'missing'}: send "
                          "application/json, multipart/form-data, image/png or image/jpeg")
        probabilities = await request.app.state.batcher.predict(pixels)
        if not batch:
            return {**answer(probabilities[0]), "digit": np.rint(pixels[0]).astype(int).tolist()}
        return {"predictions": [answer(row) for row in probabilities]}

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


def run(model: str | Path | inference.Classifier, host: str, port: int) -> None:
    """Serve ``model`` with uvicorn on ``host:port`` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model), host=host, port=port,
                log_level="info", timeout_graceful_shutdown=5)
