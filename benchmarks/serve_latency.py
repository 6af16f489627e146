"""`mnist-pipeline serve` on loopback: latency of one digit, and requests/s with concurrency.

    .venv/bin/python benchmarks/serve_latency.py                      # models/model.keras, or
    .venv/bin/python benchmarks/serve_latency.py --seconds 10 --model other.keras

The server is the real command (`mnist-pipeline serve --model M --port P`, uvicorn) in its
own process; without ``--model`` and without models/model.keras, the default network of
params.yaml is built and saved untrained (its speed does not depend on its weights). The
client (httpx2, asyncio) runs in this process, on the same CPUs as the server.

1. Latency, one client, after --warmup requests: --requests one-digit requests each of a
   JSON 28x28 array and of a 280x280 PNG drawing as the page sends it (multipart):
   p50 / p95 / mean milliseconds, request sent to answer parsed.
2. Throughput: 1, 8 and 32 clients, each sending JSON one-digit requests back to back for
   --seconds: requests/s, p50 / p95 latency, and the mean images per model call (from
   /health), once against the server as shipped (requests batched) and once against the same
   application with one request per model call (``create_app(max_model_batch=1)``).

Writes benchmarks/results/serve_latency.json (``--name``: another name).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from mnist_pipeline import paths, testing

CONCURRENCY = (1, 8, 32)
UNBATCHED_SERVER = (
    "import sys, uvicorn; from mnist_pipeline.app import api; "
    "uvicorn.run(api.create_app(sys.argv[1], max_model_batch=1), host='127.0.0.1', "
    "port=int(sys.argv[2]), log_level='warning')"
)


def model_file(requested: Path | None, folder: Path) -> tuple[Path, str]:
    """The model to serve, and how it was obtained."""
    if requested is not None:
        return requested, str(requested)
    if (common.ROOT / paths.MODEL_FILE).is_file():
        return common.ROOT / paths.MODEL_FILE, str(paths.MODEL_FILE)
    from mnist_pipeline import model, model_file

    params = common.base_params([])
    target = folder / "model.keras"
    model_file.save_model(model.export_model(model.build_network(params.model),
                                             params.model.test_time_shifts), target)
    return target, "params.yaml's network, untrained"


def payloads() -> dict[str, dict]:
    """One-digit requests: JSON pixels of a real digit, and a 280x280 drawing as a PNG."""
    digit = testing.sample_digit()
    return {
        "json": {"content": json.dumps({"pixels": digit.tolist()}),
                 "headers": {"content-type": "application/json"}},
        "png": {"files": {"file": ("drawing.png", testing.png_bytes(digit, size=280),
                                   "image/png")}},
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    milliseconds = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(milliseconds, 50)),
            "p95_ms": float(np.percentile(milliseconds, 95)),
            "mean_ms": float(milliseconds.mean()), "count": len(seconds)}


async def timed_post(client, request: dict) -> float:
    start = time.perf_counter()
    response = await client.post("/predict", **request)
    response.json()
    if response.status_code != 200:
        raise SystemExit(f"/predict answered {response.status_code}: {response.text}")
    return time.perf_counter() - start


async def latency(url: str, request: dict, warmup: int, count: int) -> dict[str, float]:
    import httpx2

    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(warmup):
            await timed_post(client, request)
        return percentiles([await timed_post(client, request) for _ in range(count)])


async def throughput(url: str, request: dict, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` loops sending ``request`` back to back for ``seconds``."""
    import httpx2

    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for _ in range(3):  # open the connections, warm up
            await asyncio.gather(*(timed_post(client, request) for _ in range(clients)))
        before = (await client.get("/health")).json()
        durations: list[float] = []
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop:
                durations.append(await timed_post(client, request))

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = (await client.get("/health")).json()
    calls = after["model_calls"] - before["model_calls"]
    return {"clients": clients, "requests_per_s": len(durations) / elapsed,
            "images_per_model_call": (after["requests"] - before["requests"]) / max(calls, 1),
            **percentiles(durations)}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__, overrides=False)
    parser.add_argument("--model", type=Path, help="default: models/model.keras if present")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300, help="per latency measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--skip-unbatched", action="store_true")
    parser.add_argument("--name", default="serve_latency",
                        help="results file benchmarks/results/NAME.json")
    args = parser.parse_args(argv)
    if args.smoke:  # the same code, a few requests: checks that it runs, measures nothing
        common.start_smoke()
        args.warmup, args.requests, args.seconds = 2, 5, 0.3

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        model_path, model_origin = model_file(args.model, Path(folder))
        requests = payloads()
        env_note = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL")}
        servers = {"batched": [sys.executable, "-m", "mnist_pipeline.app.cli", "serve",
                               "--model", str(model_path), "--port"]}
        if not args.skip_unbatched:
            servers["one request per model call"] = [sys.executable, "-c", UNBATCHED_SERVER,
                                                     str(model_path)]
        results = {"model": model_origin, "env": env_note, "latency": {}, "throughput": {}}
        for name, command in servers.items():
            port = testing.free_port()
            started = time.perf_counter()
            process = testing.start_server([*command, str(port)], port)
            url = f"http://127.0.0.1:{port}"
            try:
                if name == "batched":
                    results["start_to_health_s"] = time.perf_counter() - started
                    for kind, request in requests.items():
                        results["latency"][kind] = asyncio.run(
                            latency(url, request, args.warmup, args.requests))
                results["throughput"][name] = [
                    asyncio.run(throughput(url, requests["json"], clients, args.seconds))
                    for clients in CONCURRENCY
                ]
            finally:
                testing.stop_server(process)

    print(f"\nmodel: {model_origin}; server up (model loaded) in "
          f"{results['start_to_health_s']:.1f} s\n")
    common.print_table(
        ["one-digit request (1 client)", "p50 ms", "p95 ms", "mean ms"],
        [[kind, m["p50_ms"], m["p95_ms"], m["mean_ms"]] for kind, m in results["latency"].items()],
    )
    print()
    common.print_table(
        ["server", "clients", "requests/s", "p50 ms", "p95 ms", "images per model call"],
        [[name, run["clients"], run["requests_per_s"], run["p50_ms"], run["p95_ms"],
          run["images_per_model_call"]]
         for name, runs in results["throughput"].items() for run in runs],
    )
    settings = {"warmup": args.warmup, "requests": args.requests, "seconds": args.seconds}
    common.write_results(args.name, {"settings": settings, **results})


if __name__ == "__main__":
    main()
