"""A client of `serve --collect` for the corrections tests: a stand-in model (corrections never
call it), digits as the page sends them, a POST /corrections, and the folder's files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from mnist_pipeline import inference


def uniform(pixels: np.ndarray) -> np.ndarray:
    return np.full((len(pixels), 10), 0.1, np.float32)


STAND_IN = inference.Classifier(None, "onnx", uniform, uniform)


def picture(digit: np.ndarray, format: str = "PNG", size: int = 280) -> bytes:
    """A real digit as the page sends a drawing: light on black, ``size`` pixels wide."""
    image = Image.fromarray(digit.astype(np.uint8)).resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def post(client: TestClient, data: bytes, label: str | None = "3", writer: str | None = None,
         name: str = "drawing.png", kind: str = "image/png"):
    fields = {key: value for key, value in (("label", label), ("writer", writer))
              if value is not None}
    return client.post("/corrections", files={"file": (name, data, kind)}, data=fields)


def folder_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())
