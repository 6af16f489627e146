"""What any client may cost ``serve``, whatever it sends: one constant each, and the HTTP
status of each kind of refusal (:data:`STATUS_OF`).

Plain numbers, importing no third-party module, so that ``mnist-pipeline serve --help``
quotes them without FastAPI installed; :mod:`mnist_pipeline.app.guard` and
:mod:`mnist_pipeline.app.server` enforce them.
"""

from __future__ import annotations

# A request body larger than this is refused (413) before it is read: a phone photo is a few
# MB, and a batch of MAX_BATCH_IMAGES digits as JSON about 1-3 MB.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# What the server holds at once, whatever its clients do (measured by
# benchmarks/serve_hostile.py, asserted by tests/test_serve_load.py):
# - connections and requests in flight (uvicorn's limit_concurrency); more: 503 at once;
MAX_CONNECTIONS = 128
# - requests with a body, being read or answered; more wait for a turn (at most their body
#   deadline, then 503): MAX_BODIES x MAX_REQUEST_BYTES of bodies at most;
MAX_BODIES = 16
# - the whole body must have arrived this many seconds after the request began, or 408 and
#   the connection is closed: a stalled or a slow sender is cut off;
BODY_TIMEOUT_SECONDS = 30.0
# - pictures being decoded hold this many bytes of pixels at most, all together
#   (digit_image.DecodeBudget): a 40-megapixel RGBA PNG costs all of it, and decodes alone.
DECODE_BUDGET_BYTES = 320 * 1024 * 1024

# Digits per JSON request.
MAX_BATCH_IMAGES = 256

# HTTP status of each kind of refusal (the README lists them).
STATUS_OF = {
    "unreadable": 400,  # not valid JSON or multipart; a truncated or corrupt picture; no digit
    "too_slow": 408,  # the body did not arrive within BODY_TIMEOUT_SECONDS
    "too_large": 413,  # body over MAX_REQUEST_BYTES; picture over digit_image's pixel limit
    "unsupported": 415,  # neither JSON, multipart nor PNG/JPEG
    "invalid": 422,  # JSON of the wrong shape or type, NaN, out of range, empty or too big a batch
    "busy": 503,  # MAX_BODIES bodies in progress for the whole body deadline
}
