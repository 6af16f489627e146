"""TensorFlow Serving's REST API over the served model, so that clients written for TF
Serving work unchanged: ``POST /v1/models/mnist:predict`` and ``GET /v1/models/mnist``.

``{"instances": [28x28, ...]}`` of pixels 0..255 in, ``{"predictions": [[10 probabilities],
...]}`` out; errors as TF Serving answers them, ``{"error": "<one line>"}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mnist_pipeline.app.batching import PROBABILITY_DECIMALS
from mnist_pipeline.app.guard import Refused
from mnist_pipeline.app.limits import MAX_BATCH_IMAGES, MAX_REQUEST_BYTES
from mnist_pipeline.app.requests import (
    JSON_TYPE,
    instances_from_json,
    media_type,
)

# The model name in TensorFlow Serving's REST routes (/v1/models/<name>:predict).
TF_SERVING_NAME = "mnist"


class InstancesRequest(BaseModel):
    """TensorFlow Serving's row format (documentation only: read by
    :func:`requests.instances_from_json`)."""

    instances: list[list[list[float]]] = Field(
        description=f"N x 28 x 28 (N <= {MAX_BATCH_IMAGES}) pixels, read as `pixels` of "
        "`POST /predict`")


class TFServingPrediction(BaseModel):
    predictions: list[list[float]] = Field(
        description="per instance, the probability of each digit 0-9, in order")


class TFServingError(BaseModel):
    error: str = Field(description="why the request was refused, one line")


def router() -> APIRouter:
    """The ``/v1`` routes; the model is the application's ``state.batcher``."""
    routes = APIRouter(tags=["TensorFlow Serving"])

    @routes.get(f"/v1/models/{TF_SERVING_NAME}")
    async def tf_serving_status() -> dict[str, Any]:
        """The model's status as TensorFlow Serving reports it: one version, available."""
        return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    @routes.post(
        f"/v1/models/{TF_SERVING_NAME}:predict",
        response_model=TFServingPrediction,
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
            kind = media_type(request)
            if kind != JSON_TYPE:
                raise Refused("unsupported", f"content type {kind or 'missing'}: send "
                              "application/json")
            pixels = await run_in_threadpool(instances_from_json, await request.body())
        except Refused as refused:
            return JSONResponse({"error": refused.detail}, status_code=refused.status_code)
        probabilities = await request.app.state.batcher.predict(pixels)
        return {"predictions": np.round(probabilities.astype(np.float64),
                                        PROBABILITY_DECIMALS).tolist()}

    return routes
