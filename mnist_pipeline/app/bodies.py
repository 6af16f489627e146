"""The bodies ``serve`` reads -> float32 pixels 0..255 (N, 28, 28), or :class:`Refused`.

- a PNG or JPEG picture (multipart field ``file``, or the raw body) goes through
  :func:`pictures.picture_to_digit`, the code path of ``mnist-pipeline predict``;
- JSON ``{"pixels": ...}`` holds one 28x28 array or a batch N x 28 x 28, read as predict
  reads ``.npy`` arrays (:func:`arrays.as_pixel_batch`);
- TensorFlow Serving's ``{"instances": ...}`` (:func:`instances_from_json`).

A JSON body is counted before it is parsed (:func:`json_field`), so that none costs more
than a bounded amount of parsing.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from mnist_pipeline import pictures
from mnist_pipeline.app import arrays
from mnist_pipeline.app.guard import Refused
from mnist_pipeline.app.limits import COLLECT_MAX_SIDE, MAX_BATCH_IMAGES
from mnist_pipeline.digit_image import IMAGE_SIZE

# A JSON body is counted before it is parsed: building Python lists is what costs, holding
# the GIL, so that every request would wait (benchmarks/serve_hostile.py). Twice what
# MAX_BATCH_IMAGES digits need (so that a batch a little too big is told its size), at most:
# arrays and objects (`[`, `{`), and values (`,`, `:`).
MAX_JSON_CONTAINERS = 2 * MAX_BATCH_IMAGES * (IMAGE_SIZE + 1) + 16
MAX_JSON_SEPARATORS = 2 * MAX_BATCH_IMAGES * IMAGE_SIZE * IMAGE_SIZE + 64

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
PICTURE_TYPES = ("image/png", "image/jpeg")


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case ('' when missing)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_digits(request: Request, budget: pictures.DecodeBudget | None
                      ) -> tuple[np.ndarray, bool]:
    """The digits of a ``POST /predict`` body, and whether it was a batch (JSON N x 28 x 28).

    Parsing and decoding run in worker threads, so that the event loop keeps answering.
    """
    kind = media_type(request)
    if kind == JSON_TYPE:
        return await run_in_threadpool(pixels_from_json, await request.body())
    if kind == MULTIPART_TYPE:
        async with multipart_form(request) as form:  # closes its files
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise Refused("unreadable", 'multipart: expected a file field named "file"')
            data = await upload.read()
    elif kind in PICTURE_TYPES:
        data = await request.body()
    else:
        raise Refused("unsupported", f"content type {kind or 'missing'}: send "
                      "application/json, multipart/form-data, image/png or image/jpeg")
    return (await run_in_threadpool(picture_digit, data, budget))[np.newaxis], False


class _CompleteMultiPartParser(MultiPartParser):
    """Starlette's parser, which also tells whether the closing boundary came: without it
    (python-multipart does not check), a body cut short reads as a form without its last
    field."""

    ended = False

    def on_end(self) -> None:
        self.ended = True


@asynccontextmanager
async def multipart_form(request: Request, max_files: int = 1, max_fields: int = 8
                         ) -> AsyncIterator[FormData]:
    """The multipart/form-data body of ``request`` as a form (its files closed on exit), as
    ``request.form()`` reads it, but a body cut before its closing boundary is refused (400)
    rather than read without the field it cut."""
    parser = _CompleteMultiPartParser(request.headers, request.stream(), max_files=max_files,
                                      max_fields=max_fields)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise Refused("unreadable", f"multipart: {error.message}") from None
    try:
        if not parser.ended:
            raise Refused("unreadable", "multipart: the body ends before its closing boundary "
                          "(cut short?)")
        yield form
    finally:
        await form.close()


def clean_picture(data: bytes, budget: pictures.DecodeBudget | None = None,
                  max_side: int = COLLECT_MAX_SIDE) -> bytes:
    """The bytes of a PNG/JPEG picture -> a clean grayscale PNG of its pixels alone.

    Read as every picture is (:func:`pictures.read_picture`: bounded, EXIF rotation
    applied, transparency on white), shrunk to ``max_side`` pixels a side where larger (a
    280 px drawing is kept exact), and written again: nothing of the bytes sent (text
    chunks, EXIF, data after the picture's end) is kept. Raises :class:`Refused` as
    :func:`picture_digit` does.
    """
    if not data:
        raise Refused("unreadable", "empty upload: expected a PNG or JPEG picture")
    try:
        gray = pictures.read_picture(data, max_side=max_side, budget=budget)
    except pictures.PictureError as error:
        raise _refusal_of(error) from None
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def _refusal_of(error: pictures.PictureError) -> Refused:
    """A picture that cannot be read -> 413 when too large, else 400."""
    reason = str(error)
    too_large = "too large" in reason or "decompression bomb" in reason
    return Refused("too_large" if too_large else "unreadable", reason)


def picture_digit(data: bytes, budget: pictures.DecodeBudget | None = None) -> np.ndarray:
    """The bytes of a PNG/JPEG picture of one digit -> MNIST-style float32 (28, 28).

    :func:`pictures.picture_to_digit` does all the work, exactly as for ``mnist-pipeline
    predict``, including its limits (PNG or JPEG only; the pixel count is checked from the
    header, before decoding), its decoding cost reserved from ``budget``. Raises
    :class:`Refused`: 413 for a picture too large, else 400.
    """
    if not data:
        raise Refused("unreadable", "empty upload: expected a PNG or JPEG picture")
    try:
        return pictures.picture_to_digit(data, budget=budget)
    except pictures.PictureError as error:
        raise _refusal_of(error) from None


def pixels_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """A JSON body ``{"pixels": 28x28 or N x 28 x 28}`` -> float32 0..255 (N, 28, 28), and
    whether it was a batch (N x 28 x 28, even with N = 1) rather than one 28x28 array.

    Numbers are read as ``mnist-pipeline predict`` reads a ``.npy`` array
    (:func:`arrays.as_pixel_batch`): on the 0..255 scale, a blank digit refused. Raises
    :class:`Refused`.
    """
    value = json_field(body, "pixels", '{"pixels": 28x28 or N x 28 x 28}')
    return pixels_from_value(value, "pixels", batch_only=False)


def instances_from_json(body: bytes) -> np.ndarray:
    """TensorFlow Serving's row format ``{"instances": [28x28, ...]}`` -> float32 (N, 28, 28),
    read as :func:`pixels_from_json` reads a batch. Raises :class:`Refused`."""
    value = json_field(body, "instances", '{"instances": [28x28, ...]}')
    return pixels_from_value(value, "instances", batch_only=True)[0]


def parse_json(body: bytes) -> Any:
    """The JSON document of ``body``, or :class:`Refused`.

    Before parsing, the body's brackets and separators are counted (a C loop over the bytes,
    milliseconds for 8 MiB): more than :data:`MAX_JSON_CONTAINERS` arrays and objects, or
    :data:`MAX_JSON_SEPARATORS` values, is refused unparsed (422), so that parsing any body
    costs about as much as the largest batch allowed.
    """
    containers = body.count(b"[") + body.count(b"{")
    separators = body.count(b",") + body.count(b":")
    if containers > MAX_JSON_CONTAINERS or separators > MAX_JSON_SEPARATORS:
        raise Refused("invalid", f"JSON body of {containers:,} arrays and {separators:,} "
                      f"values: more than {MAX_BATCH_IMAGES} digits of 28x28 need, over the "
                      "limit (refused unparsed)")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 included
        raise Refused("unreadable", f"not valid JSON ({error})") from None


def json_field(body: bytes, field: str, expected: str) -> Any:
    """The value of ``field`` in a JSON object body (:func:`parse_json`), or :class:`Refused`."""
    document = parse_json(body)
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
        return arrays.as_pixel_batch(array, name), batch
    except arrays.BlankDigitError as error:  # as a blank picture is refused
        raise Refused("unreadable", str(error)) from None
    except arrays.InputError as error:
        raise Refused("invalid", str(error)) from None
