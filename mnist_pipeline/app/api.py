"""``mnist-pipeline serve``: a page to draw digits on, and a JSON API, over the trained model.

:func:`create_app` builds the FastAPI application around a model, loaded at start and again
whenever its file is replaced (:mod:`mnist_pipeline.app.model_watch`, as TensorFlow Serving
follows its model folder):

- ``GET /``: the drawing page (``static/index.html``, ``page.js``, ``page.css``; nothing is
  loaded from the internet);
- ``POST /predict``: a PNG or JPEG picture (multipart field ``file``, or the raw bytes with
  ``Content-Type: image/png`` / ``image/jpeg``), made MNIST-style by the code path of
  ``mnist-pipeline predict``; or JSON ``{"pixels": ...}``, one 28x28 array or a batch
  N x 28 x 28 of pixels (:mod:`mnist_pipeline.app.bodies` reads them all);
- ``POST /corrections``: with ``collect``, a picture and the digit it is, saved in a folder of
  labelled pictures for the pipeline (:mod:`mnist_pipeline.app.corrections`); else 404;
- ``/v1/models/mnist...``: TensorFlow Serving's REST API (:mod:`mnist_pipeline.app.tf_serving`);
- ``GET /health``: which model answers (its file's SHA-256 and times), and counts;
- FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``, whose scripts come from the
  ``fastapi-offline`` package rather than a CDN.

Every HTML answer carries one Content-Security-Policy (:func:`guard.content_security_policy`)
that allows the docs pages' own inline script and nothing else inline. A model that fails,
or answers NaN or infinite probabilities, is a 500 with a reason, never an answer.

Bad input gets a 4xx answer ``{"detail": "<one line>"}`` (``{"error": ...}`` under ``/v1``,
as TF Serving answers); see :data:`limits.STATUS_OF`. The model is an ONNX file on
onnxruntime or a ``.keras`` file (:mod:`mnist_pipeline.inference`): TensorFlow is imported for
the second only. Requests that arrive together share one model call
(:mod:`mnist_pipeline.app.batching`); what any client may cost is bounded by
:mod:`mnist_pipeline.app.limits`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mnist_pipeline import __version__, inference, pictures, uncertainty
from mnist_pipeline.app import corrections, corrections_route, model_watch, tf_serving
from mnist_pipeline.app.batching import (
    MAX_MODEL_BATCH,
    PROBABILITY_DECIMALS,
    ModelAnswerError,
    ModelBatcher,
)
from mnist_pipeline.app.bodies import (
    JSON_TYPE,
    MULTIPART_TYPE,
    read_digits,
)
from mnist_pipeline.app.guard import (
    LOG,
    GuardRequests,
    content_security_policy,
    scripts_in_page,
)
from mnist_pipeline.app.limits import (
    BODY_TIMEOUT_SECONDS,
    DECODE_BUDGET_BYTES,
    MAX_BATCH_IMAGES,
    MAX_BODIES,
    MAX_REQUEST_BYTES,
    MAX_REQUESTS,
    STATUS_OF,
)

STATIC_DIR = Path(__file__).parent / "static"
DOCS_STATIC = "/static-offline-docs"  # where fastapi-offline mounts Swagger UI and ReDoc
# onnxruntime threads per model call: the batcher runs one call at a time in one worker
# thread, beside the event loop that reads and parses requests; one thread is the most
# images per CPU-second, and leaves the other cores to the rest (benchmarks/README.md).
MODEL_THREADS = 1


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
    """JSON input (documentation only: the body is read by
    :func:`mnist_pipeline.app.bodies.pixels_from_json`)."""

    pixels: list[list[float]] | list[list[list[float]]] = Field(
        description="one 28x28 array, or a batch N x 28 x 28 (N <= "
        f"{MAX_BATCH_IMAGES}), light digit on black, MNIST-style, on the 0..255 scale "
        "(integers or floats alike; [0, 1] values must be multiplied by 255). A blank digit "
        "is refused (400) as a blank picture is.",
    )


class HealthAnswer(BaseModel):
    status: str
    model: str = Field(description="the model file's path (a model built in memory: its kind)")
    model_sha256: str | None = Field(description="SHA-256 of the model file that answers")
    model_modified: str | None = Field(description="that file's modification time (UTC)")
    model_loaded: str = Field(description="when the model that answers was loaded (UTC)")
    model_reloads: int = Field(description="new versions of the file served since start")
    model_refused: str | None = Field(description="why the file's latest version was refused "
                                      "(the model above keeps answering); null when it is served")
    version: str
    requests: int = Field(description="images predicted since start")
    model_calls: int = Field(description="model calls since start (batches)")
    collect: bool = Field(description="whether POST /corrections saves corrections "
                          "(serve --collect DIR): the page offers them then")


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
               decode_budget_bytes: int = DECODE_BUDGET_BYTES,
               collect: corrections.CorrectionFolder | str | Path | None = None,
               poll_seconds: float | None = model_watch.POLL_SECONDS,
               allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The application around ``model``: a ``.onnx`` or ``.keras`` file, or a loaded
    :class:`mnist_pipeline.inference.Classifier`.

    The model takes raw pixels 0..255 (N, 28, 28) and returns probabilities (N, 10), as
    every model file of the pipeline; it is loaded here, and its file is polled every
    ``poll_seconds`` (None: never) while the app runs: a new version that passes the checks
    of a start answers from the next model call on (:class:`model_watch.ModelWatcher`),
    one that fails is refused and the model before keeps answering. ``max_model_batch`` and
    ``window_seconds`` tune :class:`ModelBatcher` (1 and 0: one request per model call);
    ``body_timeout`` and ``max_bodies``, :class:`GuardRequests`; ``decode_budget_bytes``,
    the pixels that pictures decoded at once may hold (:class:`pictures.DecodeBudget`);
    ``collect``, the folder (or :class:`corrections.CorrectionFolder`) that corrections go to;
    ``allowed_hosts``, the names it may be reached by besides loopback ones and its address
    (:func:`guard.foreign_host`: ``serve --host NAME``).
    """
    if collect is not None and not isinstance(collect, corrections.CorrectionFolder):
        collect = corrections.CorrectionFolder(collect)
    classifier = (model if isinstance(model, inference.Classifier)
                  else inference.load(model, MODEL_THREADS))
    batcher = ModelBatcher(classifier.run_batch, max_model_batch, window_seconds)
    served = model_watch.describe(classifier)
    watcher = None

    def serve_model(new: model_watch.ServedModel) -> None:  # from the watcher's thread
        batcher.swap(new.classifier.run_batch)
        app.state.model = new

    if classifier.path is not None and poll_seconds is not None:
        watcher = model_watch.ModelWatcher(classifier.path, served, serve_model, MODEL_THREADS,
                                           poll_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if watcher is not None:
            watcher.start()
        yield
        if watcher is not None:
            watcher.stop()
        batcher.close()

    app = FastAPIOffline(
        title="MNIST digits",
        version=__version__,
        description="Classify handwritten digits with the trained model. `/` is a page "
        "to draw on; `POST /predict` takes a PNG/JPEG picture or JSON pixels.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # made below, so that their inline script is known
    )
    app.state.batcher = batcher
    app.state.model, app.state.model_watcher = served, watcher
    app.state.decode_budget = budget = pictures.DecodeBudget(decode_budget_bytes)
    docs = docs_pages(app)
    app.add_middleware(GuardRequests, max_bytes=MAX_REQUEST_BYTES, max_bodies=max_bodies,
                       body_timeout=body_timeout, max_requests=MAX_REQUESTS,
                       allowed_hosts=allowed_hosts, html_policy=content_security_policy(
                           script for html in docs.values() for script in scripts_in_page(html)))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_error_answers(app)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    for path, html in docs.items():
        app.add_api_route(path, html_page(html), include_in_schema=False)

    @app.get("/health", response_model=HealthAnswer)
    async def health() -> dict[str, Any]:
        """Whether the server is up, which model answers (the file's SHA-256 and times) and
        how much it has done."""
        model = app.state.model
        return {"status": "ok", "model": model.name, "model_sha256": model.sha256,
                "model_modified": model.modified, "model_loaded": model.loaded,
                "model_reloads": watcher.reloads if watcher else 0,
                "model_refused": watcher.refused if watcher else None,
                "version": __version__, "requests": batcher.images,
                "model_calls": batcher.model_calls, "collect": collect is not None}

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
            (500, "the model failed, or answered NaN or infinite probabilities"),
            (503, f"{MAX_REQUESTS} requests in progress, or {max_bodies} uploads in progress "
                  "all along the body's deadline"),
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
        pixels, batch = await read_digits(request, budget)
        probabilities = await request.app.state.batcher.predict(pixels)
        flags = uncertainty.uncertain(  # with the served model's own threshold
            pixels, probabilities, request.app.state.model.classifier.min_confidence)
        if not batch:
            return {**answer(probabilities[0], flags[0]),
                    "digit": np.rint(pixels[0]).astype(int).tolist()}
        return {"predictions": [answer(row, flag)
                                for row, flag in zip(probabilities, flags, strict=True)]}

    app.include_router(corrections_route.router(collect))
    app.include_router(tf_serving.router())
    return app


def docs_pages(app: FastAPI) -> dict[str, str]:
    """``/docs`` (Swagger UI) and ``/redoc``, as fastapi-offline makes them, from its files."""
    return {
        "/docs": get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png", oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters).body.decode(),
        "/redoc": get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js", with_google_fonts=False,
            redoc_favicon_url=f"{DOCS_STATIC}/favicon.png").body.decode(),
    }


def html_page(html: str) -> Callable[[], Awaitable[HTMLResponse]]:
    """A route's function that answers ``html`` (and takes no parameter from the request)."""

    async def endpoint() -> HTMLResponse:
        return HTMLResponse(html)

    return endpoint


def add_error_answers(app: FastAPI) -> None:
    """Errors as each route family answers them: ``{"detail": ...}``, and ``{"error": ...}``
    under TF Serving's ``/v1`` (its 404 and 405 included); a failed model is a 500 with its
    reason, any other failure a 500 that says to read the server's log."""

    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if tf_serving.is_tf_serving(request.url.path):
            return tf_serving.error_answer(error.status_code, str(error.detail),
                                           getattr(error, "headers", None))
        return await http_exception_handler(request, error)

    def failed(request: Request, reason: str) -> JSONResponse:
        key = "error" if tf_serving.is_tf_serving(request.url.path) else "detail"
        return JSONResponse({key: reason}, status_code=STATUS_OF["model_failed"])

    async def model_answer_error(request: Request, error: Exception) -> Response:
        LOG.error("%s %s: %s", request.method, request.url.path, error)
        return failed(request, str(error))

    async def server_error(request: Request, _error: Exception) -> Response:
        return failed(request, "internal error: the model or the server failed (see the "
                      "server's log)")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ModelAnswerError, model_answer_error)
    app.add_exception_handler(inference.ModelOutputError, model_answer_error)
    app.add_exception_handler(Exception, server_error)
