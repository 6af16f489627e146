"""The same model as ONNX (onnxruntime) and as .keras (TensorFlow), in one run, as ratios:

1. `mnist-pipeline predict digit.png`, a new process each time (what a user waits for):
   wall seconds, process CPU seconds and peak resident memory (ru_maxrss of the child);
2. images/s of `inference.load(model).probabilities` on 10,000 digits, in this process,
   after one warm-up pass (wall and CPU);
3. `mnist-pipeline serve`: resident memory once up and idle, then requests/s of one-digit
   JSON requests with 1, 8 and 32 clients (benchmarks/serve_latency.py's client), and the
   resident memory after that load.

    .venv/bin/python benchmarks/inference.py                 # models/model.keras, or
    .venv/bin/python benchmarks/inference.py --model other.keras --seconds 5
    .venv/bin/python benchmarks/inference.py --smoke         # seconds: checks it runs

Without --model and without models/model.keras, params.yaml's network is saved untrained
(speed and memory do not depend on the weights). The .onnx is exported from the .keras file
here, as the export stage does (mnist_pipeline.export.save_onnx).
Writes benchmarks/results/inference.json (--name: another name).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import serve_latency  # its client: requests/s at 1, 8 and 32 clients

from mnist_pipeline import paths, testing

KINDS = ("onnx", "keras")


def models(requested: Path | None, folder: Path, smoke: bool) -> tuple[dict[str, Path], str]:
    """A .keras file and the .onnx exported from it, and where the .keras file came from."""
    from mnist_pipeline import export, inference

    if requested is not None:
        keras_path, origin = requested, str(requested)
    elif (common.ROOT / paths.MODEL_FILE).is_file() and not smoke:
        keras_path, origin = common.ROOT / paths.MODEL_FILE, str(paths.MODEL_FILE)
    else:
        params = common.base_params(common.SMOKE_OVERRIDES if smoke else [])
        keras_path = common.untrained_model(folder, params)
        origin = "a tiny network, untrained" if smoke else "params.yaml's network, untrained"
    onnx_path = folder / "model.onnx"
    export.save_onnx(inference.load_keras_model(keras_path), onnx_path)
    return {"onnx": onnx_path, "keras": keras_path}, origin


def digit_png(folder: Path) -> Path:
    path = folder / "digit.png"
    path.write_bytes(testing.png_bytes(testing.sample_digit()))
    return path


# Runs the command in a small fresh process and reports the child's usage: ru_maxrss of a
# child forked from this process (which holds TensorFlow) would count the parent's pages.
LAUNCHER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": status, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def predict_once(model: Path, picture: Path) -> dict[str, float]:
    """One `mnist-pipeline predict` process: wall s, CPU s (user + system), peak RSS MB."""
    command = [sys.executable, "-m", "mnist_pipeline.app.cli", "predict", "--model",
               str(model), str(picture)]
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], cwd=common.ROOT,
                            capture_output=True, text=True, timeout=300)
    measured = json.loads(result.stdout)
    if measured.pop("status") != 0:
        raise SystemExit(f"predict failed: {result.stderr[-2000:]}")
    return measured


def images_per_second(model: Path, pixels: np.ndarray) -> dict[str, float]:
    from mnist_pipeline import inference

    classifier = inference.load(model)
    classifier.probabilities(pixels[:512])  # warm-up: first-call allocations, graph tracing
    start, cpu = time.perf_counter(), time.process_time()
    classifier.probabilities(pixels)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"images": len(pixels), "images_per_s": len(pixels) / wall, "wall_s": wall,
            "cpu_s": cpu}


def resident_mb(pid: int) -> float:
    return testing.rss_bytes(pid) / 2**20


def serve_run(model: Path, seconds: float) -> dict:
    request = serve_latency.payloads()["json"]
    port = testing.free_port()
    started = time.perf_counter()
    process = testing.start_server(
        [sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--model", str(model),
         "--port", str(port)], port)
    try:
        up_s = time.perf_counter() - started
        time.sleep(1.0)
        idle = resident_mb(process.pid)
        url = f"http://127.0.0.1:{port}"
        runs = [asyncio.run(serve_latency.throughput(url, request, clients, seconds))
                for clients in serve_latency.CONCURRENCY]
        loaded = resident_mb(process.pid)
    finally:
        testing.stop_server(process)
    return {"start_to_health_s": up_s, "idle_rss_mb": idle, "rss_after_load_mb": loaded,
            "throughput": runs}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__, overrides=False)
    parser.add_argument("--model", type=Path, help=f"default: {paths.MODEL_FILE} if present")
    parser.add_argument("--predict-runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--name", default="inference")
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
        args.predict_runs, args.seconds = 1, 0.3
    digits = 256 if args.smoke else 10_000

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as folder:
        files, origin = models(args.model, Path(folder), args.smoke)
        picture = digit_png(Path(folder))
        pixels = np.random.default_rng(0).integers(0, 256, (digits, 28, 28)).astype(np.float32)
        results: dict = {"model": origin, "files_mb": {kind: path.stat().st_size / 2**20
                                                       for kind, path in files.items()}}
        results["predict_one_png"] = {
            kind: [predict_once(files[kind], picture) for _ in range(args.predict_runs)]
            for kind in KINDS}
        results["images_per_s"] = {kind: images_per_second(files[kind], pixels)
                                   for kind in KINDS}
        results["serve"] = {kind: serve_run(files[kind], args.seconds) for kind in KINDS}

    def median(kind: str, key: str) -> float:
        return float(np.median([run[key] for run in results["predict_one_png"][kind]]))

    rows = [[f"predict one PNG: {key} (median of {args.predict_runs})",
             *(median(kind, key) for kind in KINDS), median("onnx", key) / median("keras", key)]
            for key in ("wall_s", "cpu_s", "peak_rss_mb")]
    speed = results["images_per_s"]
    rows.append([f"images/s, {len(pixels):,} digits, batches of 256",
                 speed["onnx"]["images_per_s"], speed["keras"]["images_per_s"],
                 speed["onnx"]["images_per_s"] / speed["keras"]["images_per_s"]])
    serve = results["serve"]
    for key in ("start_to_health_s", "idle_rss_mb", "rss_after_load_mb"):
        rows.append([f"serve: {key}", serve["onnx"][key], serve["keras"][key],
                     serve["onnx"][key] / serve["keras"][key]])
    for index, clients in enumerate(serve_latency.CONCURRENCY):
        onnx_run, keras_run = (serve[kind]["throughput"][index] for kind in KINDS)
        rows.append([f"serve: requests/s, {clients} clients", onnx_run["requests_per_s"],
                     keras_run["requests_per_s"],
                     onnx_run["requests_per_s"] / keras_run["requests_per_s"]])
    print(f"\nmodel: {origin}\n")
    common.print_table(["measure", "onnx", "keras", "onnx / keras"], rows)
    common.write_results(args.name, {"settings": vars(args) | {"model": str(args.model)},
                                     **results})


if __name__ == "__main__":
    main()
