"""The ``mnist-pipeline`` command: ``mnist-pipeline predict [options] INPUT...`` and
``mnist-pipeline serve [--model M] [--host H] [--port P]``.

Subcommands are argparse sub-parsers, each with a ``run_<name>(args) -> exit status``
function, so that another command is one more parser and one more function.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_pipeline import __version__, digit_image, fileio, inference, pictures
from mnist_pipeline.app import limits, predict

PROG = "mnist-pipeline"

# Exit statuses: documented in the help text below.
EXIT_OK = 0
EXIT_INPUT_ERRORS = 1
EXIT_NO_MODEL = 2  # argparse also exits with 2 on a bad command line
EXIT_OUTPUT_ERROR = 3

_MAX_DIGITS, _MAX_PIXELS = predict.MAX_DIGITS_PER_INPUT, pictures.MAX_PICTURE_PIXELS
_BATCH, _MIB = limits.MAX_BATCH_IMAGES, 1 << 20
_BODY_MIB, _DECODE_MIB = limits.MAX_REQUEST_BYTES / _MIB, limits.DECODE_BUDGET_BYTES / _MIB
_REQUESTS, _CONNECTIONS, _BODIES = limits.MAX_REQUESTS, limits.MAX_CONNECTIONS, limits.MAX_BODIES
PREDICT_DESCRIPTION = f"""\
Classify handwritten digits with the trained model and write one CSV row per digit.

INPUT can be:
  - a PNG or JPEG picture of one digit: a photo or scan of a dark digit on light
    paper, or a light digit on a dark background, any size. It is made MNIST-style
    first: grayscale (EXIF rotation applied, transparency on white), inverted if
    needed (see --invert), cropped to the digit, scaled to fit 20x20 and centered by
    its center of mass in 28x28;
  - a directory: its .png/.jpg/.jpeg files, sorted by name (not subdirectories);
  - an IDX image file, raw or gzip-compressed (e.g. t10k-images-idx3-ubyte.gz);
  - a .npy array of shape (N, 28, 28) of pixels on the 0..255 scale, integers or
    floats alike (nothing is guessed: multiply [0, 1] arrays, as data/prepared
    stores them, by 255 first).
IDX and .npy digits must already be MNIST-style (light digit on black, 28x28) and
are used as they are; a .npy digit with no ink (no stroke 32 above its background
on 0..255) is refused, as a blank picture is. Inputs are told apart by their
first bytes (so pipes and FIFOs work too), else by their suffix.

Limits, checked before anything is decoded: an IDX or .npy input holds at most
{_MAX_DIGITS:,} digits; a picture at most {_MAX_PIXELS:,} pixels (a bigger JPEG is decoded
at 1/2..1/8 scale first), one frame, PNG or JPEG (save GIF, BMP, TIFF or WebP
pictures as PNG).
"""

SERVE_DESCRIPTION = f"""\
Serve the trained model over HTTP (FastAPI + uvicorn). The model file is polled every
second and a new version served within seconds, once it passes the checks of a start
(replaced by dvc exp run, dvc checkout or dvc pull); one that fails is refused with one
log line and the model before keeps answering.

  /             a page to draw a digit on (or pick a photo or scan): the predicted
                digit, the 10 probabilities and the 28x28 picture the model saw
  POST /predict a PNG/JPEG picture (multipart field "file", or the raw bytes with
                Content-Type image/png or image/jpeg), made MNIST-style as predict
                does; or JSON {{"pixels": ...}}: one 28x28 array or N x 28 x 28
                (N <= {_BATCH}) on the 0..255 scale, read as predict reads .npy arrays
  POST /corrections  with --collect DIR: a picture (multipart "file") and the
                digit it is ("label", 0-9; "writer": optional id), saved in DIR as a
                folder of labelled pictures for the pipeline (corrections.folders); the page
                then offers "Wrong? It is a ..." after each answer. 404 without it
  /health       status, and which model answers (its file's SHA-256 and times)
  /docs, /redoc, /openapi.json  the API (all work offline)

Limits: a request's headers must arrive within --header-timeout, their first byte
within --idle-timeout (of the connection's opening or last answer), else it is closed;
bodies up to {_BODY_MIB:g} MiB, each fully arrived within --body-timeout (408);
{_REQUESTS} requests in progress (503 beyond) on {_CONNECTIONS} connections at most (one more
closes the one that has waited longest for its headers); {_BODIES} bodies in progress at
once (others wait); the pictures decoded at once hold {_DECODE_MIB:g} MiB of pixels at most.
TensorFlow Serving's REST API is answered under /v1/models/mnist. See the README.

Stop it with Ctrl+C. Exit status 2: no model, or it cannot be loaded; 3: the
server cannot start (the port is taken, say; a --collect DIR that is empty or a file,
cannot be written, holds a labels.csv of other columns or a bad row, or another
server collects into it).

example:
  mnist-pipeline serve &
  curl -F file=@digit.png http://127.0.0.1:8000/predict
"""

PREDICT_EPILOG = """\
output:
  CSV with the header  input,index,label,confidence,uncertain  and one row per
  digit: the input as given (a directory's files as DIR/FILE), the digit's
  position in an IDX/.npy batch (0 for a picture), the predicted class 0-9, its
  probability (4 decimals; calibrated: of answers at 0.9, about 9 in 10 are
  right), and uncertain: true when the input does not look like a handwritten
  digit (blank, noise, ink up to the edges) or the model is unsure of it.

exit status:
  0  every input was predicted
  1  some input could not be read (one 'error:' line each on stderr); the others
     are still predicted and written; if none could be read, nothing is written
     (an existing --output file is kept)
  2  bad command line, or no model (run `dvc repro` or `make sample` first)
  3  the output cannot be written (one 'error:' line naming it and why): checked
     before any input is read where possible; an existing --output file is kept;
     a missing folder of --output is an error unless --parents is given.
     An --output that is one of the inputs or the model (by any path or link), or
     a picture's name inside an input directory, is refused before any work

examples:
  mnist-pipeline predict digit.jpg
  mnist-pipeline predict --output predictions.csv scans/ data/raw/t10k-images-idx3-ubyte
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mnist-pipeline`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The MNIST pipeline's command line. The pipeline itself runs with "
        "`dvc repro`; these commands use what it produced.",
        epilog=f"predict reads pictures of digits (PNG/JPEG, or directories of them), IDX "
        "image files and .npy arrays, and writes CSV (input,index,label,confidence,"
        "uncertain). "
        f"Run `{PROG} COMMAND --help` for a command's inputs, options and output.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    predict_parser = commands.add_parser(
        "predict",
        help="classify digits in pictures, IDX files or .npy arrays; write CSV",
        description=PREDICT_DESCRIPTION,
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict_parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", type=Path,
        help="picture, directory of pictures, IDX image file or .npy array",
    )
    add_model_argument(predict_parser)
    predict_parser.add_argument(
        "--output", "-o", type=Path, metavar="FILE.csv",
        help="write the CSV to this file (atomically) instead of standard output",
    )
    predict_parser.add_argument(
        "--parents", action="store_true",
        help="create the missing folders of --output (as mkdir -p); without it, a missing "
        "folder is an error, so that a mistyped path does not scatter new folders",
    )
    predict_parser.add_argument(
        "--invert", choices=digit_image.INVERT_MODES, default="auto",
        help="pictures only: 'auto' (default) inverts a picture whose border is mostly "
        "light, i.e. a dark digit on paper; 'always' or 'never' force it",
    )
    predict_parser.set_defaults(run=run_predict)

    serve_parser = commands.add_parser(
        "serve",
        help="serve a page to draw digits on and a JSON API (POST /predict)",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(serve_parser)
    serve_parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)",
    )
    serve_parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default: %(default)s)",
    )
    serve_parser.add_argument(
        "--body-timeout", type=positive_seconds, default=None, metavar="SECONDS",
        help="a request's whole body must arrive within this, else 408 and the connection "
        f"is closed (default: {limits.BODY_TIMEOUT_SECONDS:g})",
    )
    serve_parser.add_argument(
        "--header-timeout", type=positive_seconds, default=limits.HEADER_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="a request's headers must arrive within this of the connection's opening or "
        "last answer, else it is closed (408) (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--idle-timeout", type=positive_seconds, default=limits.IDLE_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="a connection that sends nothing for this long after opening or after an "
        "answer is closed (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--collect", default=None, metavar="DIR",  # a str: Path('') would be '.'
        help="save the corrections people make on the page (POST /corrections) in DIR: "
        "labels.csv (file,label,writer,time) and the pictures, re-encoded as grayscale PNG "
        "(created if missing; one server per folder; default: corrections are not taken)",
    )
    serve_parser.add_argument(
        "--collect-max", type=positive_count, default=limits.MAX_CORRECTIONS, metavar="N",
        help="take corrections while DIR holds fewer than N pictures, then answer 507 "
        "(default: %(default)s)",
    )
    serve_parser.add_argument(
        "--collect-max-bytes", type=byte_count, default=limits.MAX_CORRECTION_BYTES,
        metavar="SIZE",
        help="take corrections while DIR's files hold fewer than SIZE bytes (a number, or "
        f"with K, M or G: KiB, MiB, GiB), then answer 507 (default: "
        f"{limits.MAX_CORRECTION_BYTES >> 20}M)",
    )
    serve_parser.set_defaults(run=run_serve)
    return parser


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return seconds


def positive_count(text: str) -> int:
    """argparse type: a whole number >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def byte_count(text: str) -> int:
    """argparse type: a size in bytes >= 1, with an optional K, M or G (KiB, MiB, GiB)."""
    digits, unit = text.strip(), 1
    if digits[-1:].upper() in ("K", "M", "G"):
        unit = 1 << (10 * ("KMG".index(digits[-1].upper()) + 1))
        digits = digits[:-1]
    if not (digits.isascii() and digits.isdigit()) or int(digits) * unit < 1:
        raise argparse.ArgumentTypeError(f"expected a size in bytes >= 1 (e.g. 512M), got "
                                         f"{text!r}")
    return int(digits) * unit


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, default=None, metavar="MODEL",
        help="trained model, .onnx (run on onnxruntime, no TensorFlow) or .keras (default: "
        "models/model.onnx when it exists, else models/model.keras)",
    )


def load_classifier(model: Path | None, threads: int | None = None
                    ) -> inference.Classifier | None:
    """The model named by ``--model`` (or the default one), or None after one error line."""
    try:
        return inference.load(model or inference.default_model_path(), threads)
    except inference.ModelError as error:
        report(str(error))
        return None


def run_predict(args: argparse.Namespace) -> int:
    """Predict every input and write the CSV; returns the exit status."""
    # Checked before reading anything: a missing model is the likeliest first-run mistake,
    # and an output that cannot be written should not cost a whole batch of work first.
    model_path = args.model or inference.default_model_path()
    try:
        inference.check_model_file(model_path)
    except inference.ModelError as error:
        report(str(error))
        return EXIT_NO_MODEL
    if args.output is not None:
        try:
            fileio.check_output(args.output, [*args.inputs, model_path],
                                predict.IMAGE_SUFFIXES)
            if not args.parents:
                check_folder(args.output)
        except OSError as error:
            report(str(error))
            return EXIT_OUTPUT_ERROR

    loaded, errors = predict.load_inputs(args.inputs, args.invert)
    for error in errors:
        report(str(error))
    if errors and not loaded:
        return EXIT_INPUT_ERRORS  # nothing to write: an existing --output file is kept

    rows: list[tuple[str, int, int, float, bool]] = []
    if loaded:
        classifier = load_classifier(model_path)
        if classifier is None:
            return EXIT_NO_MODEL
        try:
            rows = predict.predict_rows(classifier, loaded)
        except inference.ModelOutputError as error:  # NaN or infinity: no answer to write
            report(str(error))
            return EXIT_NO_MODEL

    try:
        fileio.write_output(predict.format_csv(rows), args.output)
    except OSError as error:
        report(str(error))
        return EXIT_OUTPUT_ERROR
    return EXIT_INPUT_ERRORS if errors else EXIT_OK


def check_folder(output: Path) -> None:
    """OSError (one line) when the folder of ``output`` is missing: created only when asked
    (``--parents``), as ``mkdir`` does without ``-p``."""
    folder = output.absolute().parent
    if not folder.is_dir():
        raise OSError(f"{output}: cannot be written (no folder {output.parent}; "
                      "--parents creates it)")


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve it (and its file's next versions) until interrupted;
    returns the exit status."""
    from mnist_pipeline.app import api, corrections, server  # only serve needs FastAPI

    collect = None
    if args.collect is not None:  # before the model: a mistyped folder fails at once
        try:
            collect = corrections.CorrectionFolder(args.collect, args.collect_max,
                                                   args.collect_max_bytes)
        except corrections.CollectError as error:
            report(str(error))
            return EXIT_OUTPUT_ERROR
    classifier = load_classifier(args.model, api.MODEL_THREADS)
    if classifier is None:
        return EXIT_NO_MODEL

    timeout = {} if args.body_timeout is None else {"body_timeout": args.body_timeout}
    server.run(classifier, args.host, args.port, header_timeout=args.header_timeout,
               idle_timeout=args.idle_timeout, collect=collect, **timeout)
    return EXIT_OK


def report(message: str) -> None:
    """One ``mnist-pipeline: error: ...`` line on stderr, as argparse writes its own."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the command, return its status.

    The console script calls this and exits with what it returns.
    """
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
