"""Launching ``serve``: uvicorn with the limits of :mod:`mnist_pipeline.app.limits` on
connections, and the process tuned for a server that decodes large pictures.
"""

from __future__ import annotations

from pathlib import Path

from mnist_pipeline import inference
from mnist_pipeline.app.limits import BODY_TIMEOUT_SECONDS, MAX_CONNECTIONS
from mnist_pipeline.app.serve import create_app


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
