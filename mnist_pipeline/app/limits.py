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
# - requests in progress (guard.GuardRequests); more: 503 at once;
MAX_REQUESTS = 128
# - open connections, requests or not: one more closes the one that has waited longest for
#   its request's headers (server.DeadlineH11Protocol), so idle ones never shut others out;
MAX_CONNECTIONS = 1024
# - a connection must send its next request's headers within this many seconds of opening
#   (or of its last answer), and begin them within IDLE_TIMEOUT_SECONDS, or it is closed
#   (408 when some bytes came): idle and slow-header connections cannot pile up;
HEADER_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 5.0
# - requests with a body, being read or answered; more wait for a turn (at most their body
#   deadline, then 503): MAX_BODIES x MAX_REQUEST_BYTES of bodies at most;
MAX_BODIES = 16
# - the whole body must have arrived this many seconds after the request began, or 408 and
#   the connection is closed: a stalled or a slow sender is cut off;
BODY_TIMEOUT_SECONDS = 30.0
# - pictures being decoded hold this many bytes of pixels at most, all together
#   (pictures.DecodeBudget): a 40-megapixel RGBA PNG costs all of it, and decodes alone.
DECODE_BUDGET_BYTES = 320 * 1024 * 1024

# Digits per JSON request.
MAX_BATCH_IMAGES = 256

# Pictures a corrections folder (serve --collect DIR) may hold, by default (--collect-max),
# and its bytes, labels.csv and every file in it counted (--collect-max-bytes): what a disk,
# a `dvc push` and a retraining can take from a page open to anyone. Pictures are saved
# re-encoded, grayscale PNG of at most COLLECT_MAX_SIDE pixels a side: a drawing from the
# page (280 px) is 3-6 KB, kept exact; a photo 50-300 KB.
MAX_CORRECTIONS = 10_000
MAX_CORRECTION_BYTES = 512 * 1024 * 1024
COLLECT_MAX_SIDE = 560

# HTTP status of each kind of refusal (the README lists them).
STATUS_OF = {
    "unreadable": 400,  # not valid JSON or multipart; a truncated or corrupt picture; no digit
    "too_slow": 408,  # the body did not arrive within BODY_TIMEOUT_SECONDS
    "too_large": 413,  # body over MAX_REQUEST_BYTES; picture over digit_image's pixel limit
    "unsupported": 415,  # neither JSON, multipart nor PNG/JPEG
    "invalid": 422,  # JSON of the wrong shape or type, NaN, out of range, empty or too big a batch
    "too_slow_headers": 408,  # the headers did not arrive within HEADER_TIMEOUT_SECONDS
    "busy": 503,  # MAX_REQUESTS in progress, or MAX_BODIES bodies for the whole body deadline
    "model_failed": 500,  # the model raised, or answered NaN or infinite probabilities
    "not_collecting": 404,  # POST /corrections to a server started without --collect
    "full": 507,  # the corrections folder holds --collect-max pictures or -bytes, or the disk
    # is full
    "collect_failed": 500,  # the corrections folder was changed under the server (labels.csv)
    # Refused before any route, whatever the path (guard.GuardRequests):
    "foreign_origin": 403,  # a POST from another origin's page (Origin, Sec-Fetch-Site)
    "unknown_host": 421,  # a Host header neither loopback nor the server's (DNS rebinding)
}
