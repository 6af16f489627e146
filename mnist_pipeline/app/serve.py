"""``mnist-pipeline serve``: a page to draw digits on, and a JSON API, over the trained model.

:func:`create_app` builds the FastAPI application around a model loaded once:

- ``GET /``: the drawing page (``static/index.html``, ``page.js``, ``page.css``; nothing is
  loaded from the internet);
- ``POST /predict``: a PNG or JPEG picture (multipart field ``file``, or the raw bytes with
  ``Content-Type: image/png`` / ``image/jpeg``), made MNIST-style by the code path of
  ``mnist-pipeline predict``; or JSON ``{"pixels": ...}``, one 28x28 array or a batch
  N x 28 x 28 of pixels (:mod:`mnist_pipeline.app.requests` reads them all);
- ``/v1/models/mnist...``: TensorFlow Serving's REST API (:mod:`mnist_pipeline.app.tf_serving`);
- ``GET /health``, and FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``, whose scripts
  come from the ``fastapi-offline`` package rather than a CDN.

Bad input gets a 4xx answer ``{"detail": "<one line>"}`` (``{"error": ...}`` under ``/v1``,
as TF Serving answers); see :data:`limits.STATUS_OF`. The model is an ONNX file on
onnxruntime or a ``.keras`` file (:mod:`mnist_pipeline.inference`): TensorFlow is imported for
the second only. Requests that arrive together share one model call
(:mod:`mnist_pipeline.app.batching`); what any client may cost is bounded by
:mod:`mnist_pipeline.app.limits`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from mnist_pipeline import __version__, inference, uncertainty
from mnist_pipeline.app import digit_image, tf_serving
from mnist_pipeline.app.batching import MAX_MODEL_BATCH, PROBABILITY_DECIMALS, ModelBatcher
from mnist_pipeline.app.guard import GuardRequests
from mnist_pipeline.app.limits import (
    BODY_TIMEOUT_SECONDS,
    DECODE_BUDGET_BYTES,
    MAX_BATCH_IMAGES,
    MAX_BODIES,
    MAX_REQUEST_BYTES,
)
from mnist_pipeline.app.requests import (
    JSON_TYPE,
    MULTIPART_TYPE,
    read_digits,
)

STATIC_DIR = Path(__file__).parent / "static"
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
    :func:`mnist_pipeline.app.requests.pixels_from_json`)."""

    pixels: list[list[float]] | list[list[list[float]]] = Field(
        description="one 28x28 array, or a batch N x 28 x 28 (N <= "
        f"{MAX_BATCH_IMAGES}), light digit on black, MNIST-style, on the 0..255 scale "
        "(integers or floats alike; [0, 1] values must be multiplied by 255). A blank digit "
        "is refused (400) as a blank picture is.",
    )


class HealthAnswer(BaseModel):
    status: str
    model: str
    version: str
    requests: int = Field(description="images predicted since start")
    model_calls: int = Field(description="model calls since start (batches)")


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
        pixels, batch = await read_digits(request, budget)
        probabilities = await request.app.state.batcher.predict(pixels)
        flags = uncertainty.uncertain(pixels, probabilities)
        if not batch:
            return {**answer(probabilities[0], flags[0]),
                    "digit": np.rint(pixels[0]).astype(int).tolist()}
        return {"predictions": [answer(row, flag)
                                for row, flag in zip(probabilities, flags, strict=True)]}

    app.include_router(tf_serving.router())
    return app
