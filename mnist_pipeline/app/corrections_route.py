"""``POST /corrections``: the page's corrections, checked and saved into a
:class:`~mnist_pipeline.app.corrections.CorrectionFolder` (or a 404 that says how to collect)."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mnist_pipeline import pictures
from mnist_pipeline.app.bodies import (
    MULTIPART_TYPE,
    clean_picture,
    media_type,
    multipart_form,
    picture_digit,
)
from mnist_pipeline.app.corrections import (
    WRITER,
    CollectError,
    CorrectionFolder,
    FolderFull,
    InvalidCorrection,
    parse_label,
    parse_writer,
)
from mnist_pipeline.app.guard import LOG, Refused
from mnist_pipeline.app.limits import COLLECT_MAX_SIDE, MAX_REQUEST_BYTES


def checked_picture(data: bytes, budget: pictures.DecodeBudget | None = None) -> bytes:
    """The picture sent -> the clean PNG to keep (:func:`bodies.clean_picture`, at most
    :data:`limits.COLLECT_MAX_SIDE` a side), checked to hold a digit as the pipeline will
    read it; :class:`Refused` otherwise."""
    clean = clean_picture(data, budget, COLLECT_MAX_SIDE)
    picture_digit(clean, budget)
    return clean


NOT_COLLECTING = ("this server does not collect corrections: start it with "
                  "`mnist-pipeline serve --collect DIR`")


class CorrectionAnswer(BaseModel):
    """What was saved: the row added to labels.csv, and the pictures in the folder since."""

    file: str = Field(description="the picture's name in the folder (made by the server)")
    label: int = Field(description="the digit it is, 0-9")
    writer: str = Field(description="who drew it, as sent ('' when not)")
    time: str = Field(description="when it was saved, UTC, ISO 8601")
    count: int = Field(description="pictures in the folder, this one included")


CORRECTIONS_OPENAPI = {
    "requestBody": {"required": True, "content": {MULTIPART_TYPE: {"schema": {
        "type": "object", "required": ["file", "label"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "the picture of one digit, PNG or JPEG, as /predict takes it"},
            "label": {"type": "string", "pattern": "^[0-9]$", "description": "the digit it is"},
            "writer": {"type": "string", "pattern": WRITER.pattern,
                       "description": "who drew it: the page sends a random id it keeps"},
        },
    }}}},
}


def router(folder: CorrectionFolder | None) -> APIRouter:
    """``POST /corrections`` into ``folder``; without one, a 404 that says how to collect.

    The application that includes it closes ``folder`` (its lock released) when it stops.
    """
    if folder is None:
        routes = APIRouter()
        @routes.post("/corrections", include_in_schema=False)
        async def not_collecting() -> None:
            raise Refused("not_collecting", NOT_COLLECTING)

        return routes

    @asynccontextmanager
    async def closed_at_exit(_app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            folder.close()

    routes = APIRouter(lifespan=closed_at_exit)

    @routes.post(
        "/corrections", status_code=201, response_model=CorrectionAnswer,
        openapi_extra=CORRECTIONS_OPENAPI,
        responses={status: {"description": reason} for status, reason in (
            (400, "unreadable or incomplete multipart, no file field, a picture that cannot "
                  "be read or holds no digit"),
            (403, "sent by another origin's page (Origin, Sec-Fetch-Site)"),
            (413, f"body over {MAX_REQUEST_BYTES:,} bytes, or a picture of too many pixels"),
            (415, "not multipart/form-data"),
            (421, "a Host header that is not this server's"),
            (422, "a label that is not one digit 0-9, a writer that is not a short plain token"),
            (507, f"the folder holds {folder.max_pictures:,} pictures (--collect-max) or "
                  f"{folder.max_bytes:,} bytes (--collect-max-bytes), or the disk is full"),
        )},
    )
    async def correct(request: Request) -> dict[str, Any]:
        """Save a picture of a digit the model got wrong, and the digit it is, into the
        folder of `serve --collect DIR` (labels.csv and the picture beside it)."""
        if media_type(request) != MULTIPART_TYPE:
            raise Refused("unsupported", "send multipart/form-data: file, label and writer")
        async with multipart_form(request) as form:
            upload, label, writer = form.get("file"), form.get("label"), form.get("writer")
            if upload is None or isinstance(upload, str):
                raise Refused("unreadable", 'multipart: expected a file field named "file"')
            try:
                label, writer = parse_label(label), parse_writer(writer)
            except InvalidCorrection as error:
                raise Refused("invalid", str(error)) from None
            if folder.full:  # before decoding: a full folder costs nothing more
                raise Refused("full", folder.full_reason())
            data = await upload.read()
        clean = await run_in_threadpool(checked_picture, data, request.app.state.decode_budget)
        try:
            saved = await run_in_threadpool(folder.save, clean, "PNG", label, writer)
        except FolderFull as error:
            raise Refused("full", str(error)) from None
        except CollectError as error:
            LOG.error("POST /corrections: %s", error)
            raise Refused("collect_failed", str(error)) from None
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            LOG.error("POST /corrections: %s", error)
            raise Refused("full", f"the corrections folder cannot be written: {error}") from None
        return asdict(saved)

    return routes
