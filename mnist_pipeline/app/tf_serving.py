"""TensorFlow Serving's REST API over the served model, so that clients written for TF
Serving work unchanged. What it documents for a model of one input and one output:

- ``POST /v1/models/mnist[/versions/1]:predict``: rows ``{"instances": [28x28, ...]}`` or
  ``{"instances": [{"pixels": 28x28}, ...]}`` answer ``{"predictions": [[10 probabilities],
  ...]}``; columns ``{"inputs": N x 28 x 28}`` or ``{"inputs": {"pixels": N x 28 x 28}}``
  answer ``{"outputs": [[...], ...]}``; ``signature_name`` may name ``serving_default``,
  or be empty or absent for it (the default signature, as TF Serving takes it);
- ``GET /v1/models/mnist[/versions/1]``: the model's status; ``.../metadata``: its
  signature (input ``pixels`` float (-1, 28, 28), output ``probabilities`` float (-1, 10));
- every failure under ``/v1``, 404 and 405 included, is ``{"error": "<one line>"}``; a
  ``POST`` of a model or a version without a verb is 405, as in TF Serving.

Pixels are read as ``POST /predict`` reads them, within the same limits; the status codes
are those of ``/predict`` (:data:`limits.STATUS_OF`). ``:classify`` and ``:regress`` are not
served: the model has a predict signature only, as a Keras export has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mnist_pipeline.app.batching import PROBABILITY_DECIMALS
from mnist_pipeline.app.bodies import media_type, parse_json, pixels_from_value
from mnist_pipeline.app.guard import Refused
from mnist_pipeline.app.limits import MAX_BATCH_IMAGES, MAX_REQUEST_BYTES

# The model name in TensorFlow Serving's REST routes (/v1/models/<name>:predict).
TF_SERVING_NAME = "mnist"
VERSION = "1"  # one model, one version, as TF Serving numbers a model's first export
SIGNATURE = "serving_default"  # TF Serving's default signature key
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# Content types that say the body is not JSON. TF Serving reads every body as JSON
# (`curl -d` sends form-urlencoded), so anything else is tried as JSON.
NOT_JSON_TYPES = ("image/", "multipart/", "audio/", "video/")


class InstancesRequest(BaseModel):
    """TensorFlow Serving's predict request (documentation only: read by
    :func:`pixels_from_request`)."""

    signature_name: str | None = Field(default=None,
                                       description=f"`{SIGNATURE}` (the only signature); "
                                       "empty or absent means the default, the same")
    instances: list[list[list[float]]] | list[dict[str, list[list[float]]]] | None = Field(
        default=None,
        description=f"rows: N x 28 x 28 (N <= {MAX_BATCH_IMAGES}) pixels 0..255, or "
        f'N objects {{"{INPUT_NAME}": 28x28}}; read as `pixels` of `POST /predict`')
    inputs: list[list[list[float]]] | dict[str, list[list[list[float]]]] | None = Field(
        default=None,
        description=f'columns: N x 28 x 28, or {{"{INPUT_NAME}": N x 28 x 28}}; not with '
        "`instances`")


class TFServingPrediction(BaseModel):
    predictions: list[list[float]] | None = Field(
        default=None, description="rows asked: per instance, the probability of each digit "
        "0-9, in order")
    outputs: list[list[float]] | None = Field(
        default=None, description="columns asked: the same, as one tensor N x 10")


class TFServingError(BaseModel):
    error: str = Field(description="why the request was refused, one line")


def is_tf_serving(path: str) -> bool:
    """Whether ``path`` is under TF Serving's routes, where errors are ``{"error": ...}``."""
    return path == "/v1" or path.startswith("/v1/")


def error_answer(status: int, reason: str, headers: dict[str, str] | None = None
                 ) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def pixels_from_request(body: bytes) -> tuple[np.ndarray, bool]:
    """A TF Serving predict body -> float32 pixels 0..255 (N, 28, 28), and whether it was
    columnar (``inputs``: answered as ``outputs``). Raises :class:`Refused`."""
    document = parse_json(body)
    if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
        raise Refused("invalid", 'expected a JSON object {"instances": [28x28, ...]} or '
                      '{"inputs": N x 28 x 28}, one of the two')
    # TF Serving reads an absent or empty signature_name as the default signature's key.
    signature = document.get("signature_name")
    if signature not in (None, "", SIGNATURE):
        raise Refused("invalid", f"signature_name {str(signature)[:80]!r} not found: the "
                      f"model's only signature is {SIGNATURE!r}")
    columnar = "inputs" in document
    value = document["inputs" if columnar else "instances"]
    if columnar and isinstance(value, dict):
        value = named(value, "inputs")
    elif not columnar and isinstance(value, list) and value and \
            any(isinstance(row, dict) for row in value):
        if not all(isinstance(row, dict) for row in value):
            raise Refused("invalid", "instances: mixes objects with arrays")
        value = [named(row, "instances") for row in value]
    return pixels_from_value(value, "inputs" if columnar else "instances", batch_only=True)[0], \
        columnar


def named(value: dict[str, Any], where: str) -> Any:
    """The tensor of a ``{"pixels": ...}`` object, or :class:`Refused` naming the others."""
    if set(value) != {INPUT_NAME}:
        others = ", ".join(repr(str(key)[:40]) for key in list(value)[:5] if key != INPUT_NAME)
        reason = f"input(s) {others} not in the signature" if others else "no input"
        raise Refused("invalid", f"{where}: {reason}: the model's only input is "
                      f"{INPUT_NAME!r}")
    return value[INPUT_NAME]


def router() -> APIRouter:
    """The ``/v1`` routes; the model is the application's ``state.batcher``."""
    routes = APIRouter(tags=["TensorFlow Serving"])

    def find(name: str, version: str | None) -> None:
        """404 unless ``name`` (and ``version``) is the model served."""
        if name != TF_SERVING_NAME or version not in (None, VERSION):
            spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise HTTPException(404, f"Servable not found for request: {spec}")

    def status() -> dict[str, Any]:
        return {"model_version_status": [{"version": VERSION, "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    @routes.get("/v1/models/{name}")
    async def model_status(name: str) -> dict[str, Any]:
        """The model's status as TensorFlow Serving reports it: one version, available."""
        if ":" in name:
            raise HTTPException(405, f"GET /v1/models/{name}: POST it")
        find(name, None)
        return status()

    @routes.get("/v1/models/{name}/versions/{version}")
    async def version_status(name: str, version: str) -> dict[str, Any]:
        """The status of one version (`1`, the only one)."""
        if ":" in version:
            raise HTTPException(405, f"GET /v1/models/{name}/versions/{version}: POST it")
        find(name, version)
        return status()

    @routes.get("/v1/models/{name}/metadata")
    @routes.get("/v1/models/{name}/versions/{version}/metadata")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        """The model's signature as TensorFlow Serving's metadata API describes it."""
        find(name, version)
        return {"model_spec": {"name": TF_SERVING_NAME, "signature_name": "",
                               "version": VERSION},
                "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
                    "inputs": {INPUT_NAME: tensor_info(INPUT_NAME, -1, 28, 28)},
                    "outputs": {OUTPUT_NAME: tensor_info(OUTPUT_NAME, -1, 10)},
                    "method_name": "tensorflow/serving/predict"}}}}}

    predict_doc = {
        "response_model": TFServingPrediction,
        "response_model_exclude_none": True,
        "openapi_extra": {"requestBody": {"required": True, "content": {
            "application/json": {"schema": InstancesRequest.model_json_schema()}}}},
        "responses": {code: {"description": reason, "model": TFServingError}
                      for code, reason in ((400, "not valid JSON, or a blank digit"),
                                           (404, "another model or version"),
                                           (413, f"body over {MAX_REQUEST_BYTES:,} bytes"),
                                           (415, "a picture or multipart body, not JSON"),
                                           (422, "not instances or inputs of N x 28 x 28 "
                                                 "pixels 0..255 (N <= "
                                                 f"{MAX_BATCH_IMAGES}); another signature "
                                                 "or input name"),
                                           (500, "the model failed"))},
    }

    @routes.post("/v1/models/{target}", **predict_doc)
    async def predict(target: str, request: Request) -> Any:
        """TensorFlow Serving's REST predict API, `POST /v1/models/mnist:predict`."""
        return await answer(request, target, None)

    @routes.post("/v1/models/{name}/versions/{target}", **predict_doc)
    async def predict_version(name: str, target: str, request: Request) -> Any:
        """The same, for version 1: `POST /v1/models/mnist/versions/1:predict`."""
        if ":" not in target:  # a version without a verb, as the model without one: 405
            raise HTTPException(405, f"POST {request.url.path}: POST .../{target}:predict, "
                                     "or GET it")
        return await answer(request, f"{name}:{target.partition(':')[2]}",
                            target.partition(":")[0])

    async def answer(request: Request, target: str, version: str | None) -> Any:
        name, _, verb = target.rpartition(":")
        if not name:
            raise HTTPException(405, f"POST {request.url.path}: POST .../{target}:predict, "
                                   "or GET it")
        find(name, version)
        if verb != "predict":
            raise Refused("invalid", f"{verb!r}: only predict is served (the model has no "
                          "classify or regress signature)")
        kind = media_type(request)
        if kind.startswith(NOT_JSON_TYPES):
            raise Refused("unsupported", f"content type {kind}: send application/json")
        pixels, columnar = await run_in_threadpool(pixels_from_request, await request.body())
        probabilities = await request.app.state.batcher.predict(pixels)
        rounded = np.round(probabilities.astype(np.float64), PROBABILITY_DECIMALS).tolist()
        return {"outputs": rounded} if columnar else {"predictions": rounded}

    return routes


def tensor_info(name: str, *shape: int) -> dict[str, Any]:
    """A float tensor's ``TensorInfo`` as TF Serving writes it in JSON (sizes as strings)."""
    return {"dtype": "DT_FLOAT", "name": f"{SIGNATURE}_{name}:0",
            "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape],
                             "unknown_rank": False}}
