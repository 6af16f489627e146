"""`mnist-pipeline serve` (real uvicorn, loopback) under hostile traffic: memory and stalls.

    .venv/bin/python benchmarks/serve_hostile.py                 # an untrained small model
    .venv/bin/python benchmarks/serve_hostile.py --model models/model.onnx --name NAME

The server is the real command in its own process; its memory is read from
/proc/<pid>/status (VmRSS), sampled every 10 ms. Three attacks, one after the other, each
bounded in count and time, all to 127.0.0.1:

1. pictures: 8 concurrent uploads of the worst cheap picture found by the probe round, a
   6300x6300 RGBA PNG (transparent background, black strokes, optimized: ~175 KB, under the
   40-megapixel limit). Peak and settled RSS growth, statuses, seconds.
2. unfinished: 200 connections that declare an 8 MiB body and send all but one byte, then
   wait (at most --hold seconds). Peak RSS growth, and how many the server cut off (408,
   503, or closed) within that time.
3. json: 4 concurrent JSON bodies of 8 MiB of ``[[]],[[]],...`` (cheap to send, costly to
   parse), while /health and an ordinary one-digit JSON request are sent every 50 ms:
   their worst and median latency.

Writes benchmarks/results/serve_hostile.json (``--name``: another name).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
import numpy as np
import serve_latency

MIB = 1 << 20


def small_onnx_model(folder: Path) -> Path:
    """An untrained dense model with the pipeline's contract, as ONNX (its speed and memory
    do not depend on its weights)."""
    import keras
    from keras import layers

    from mnist_pipeline.export import save_onnx

    model = keras.Sequential([keras.Input((28, 28)), layers.Rescaling(1 / 255),
                              layers.Flatten(), layers.Dense(128, activation="relu"),
                              layers.Dense(10, activation="softmax")])
    model(np.zeros((1, 28, 28), np.float32))  # built, as export wants
    save_onnx(model, folder / "model.onnx")
    return folder / "model.onnx"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler:
    """The peak VmRSS of ``pid`` while the ``with`` block runs (sampled every 10 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, rss_bytes(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


def start_server(model: Path, port: int, log: io.TextIOBase) -> subprocess.Popen:
    return serve_latency.start_server(
        [sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--model", str(model),
         "--port", str(port)], port, log)


def worst_png(side: int = 6300) -> bytes:
    """A ``side`` x ``side`` RGBA PNG: transparent, a few thick black strokes, optimized."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    width = side // 40
    draw.line([(side * 0.3, side * 0.2), (side * 0.7, side * 0.2), (side * 0.45, side * 0.85)],
              fill=(0, 0, 0, 255), width=width)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def post_raw(port: int, body: bytes, content_type: str, timeout: float) -> tuple[int, float]:
    """One POST /predict over a plain socket: (status or 0 when cut, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                           f"{content_type}\r\nContent-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n".encode() + body)
        try:
            head = connection.recv(64)
        except OSError:
            head = b""
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - start


def attack_pictures(pid: int, port: int, count: int = 8) -> dict:
    picture = worst_png()
    before = rss_bytes(pid)
    results: list[tuple[int, float]] = []
    with RssSampler(pid) as sampler:
        threads = [threading.Thread(target=lambda: results.append(
            post_raw(port, picture, "image/png", 120))) for _ in range(count)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        time.sleep(1.0)
    return {"picture_bytes": len(picture), "count": count,
            "statuses": sorted(status for status, _ in results),
            "seconds": round(elapsed, 2),
            "peak_growth_mb": round((sampler.peak - before) / 1e6, 1),
            "settled_growth_mb": round((rss_bytes(pid) - before) / 1e6, 1)}


def attack_unfinished(pid: int, port: int, count: int = 200, declared: int = 8 * MIB,
                      hold: float = 30.0) -> dict:
    """``count`` sockets each declaring ``declared`` bytes and sending ``declared - 1``."""
    body = memoryview(b"\0" * (declared - 1))
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sockets = []
    before = rss_bytes(pid)
    start = time.perf_counter()
    answers: dict[str, int] = {}
    with RssSampler(pid) as sampler:
        try:
            for _ in range(count):
                connection = socket.create_connection(("127.0.0.1", port), timeout=5)
                connection.sendall(head)
                connection.setblocking(False)
                sockets.append(connection)
            sent = {connection: 0 for connection in sockets}
            open_ = set(sockets)
            deadline = start + hold
            def answered(connection: socket.socket) -> None:
                """Record what the server said (or that it closed) and stop watching."""
                try:
                    data = connection.recv(64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data = b""
                key = data.split()[1].decode() if data.startswith(b"HTTP/") else "closed"
                answers[key] = answers.get(key, 0) + 1
                open_.discard(connection)

            while open_ and time.perf_counter() < deadline:
                writing = [c for c in open_ if sent[c] < len(body)]
                readable, writable, _ = select.select(list(open_), writing, [], 0.2)
                for connection in readable:
                    answered(connection)
                for connection in writable:
                    if connection not in open_:
                        continue
                    try:
                        sent[connection] += connection.send(body[sent[connection]:
                                                                 sent[connection] + 256 * 1024])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:  # cut off: the answer may still be there to read
                        connection.setblocking(True)
                        connection.settimeout(1)
                        answered(connection)
                        open_.discard(connection)
            fully_sent = sum(sent[c] == len(body) for c in sockets)
            held_growth = rss_bytes(pid) - before
        finally:
            for connection in sockets:
                connection.close()
        elapsed = time.perf_counter() - start
        time.sleep(1.0)
    return {"connections": count, "declared_bytes": declared, "hold_s": hold,
            "sent_all_but_one": fully_sent, "answered_or_cut": answers,
            "still_open_at_end": count - sum(answers.values()),
            "seconds": round(elapsed, 1),
            "peak_growth_mb": round((sampler.peak - before) / 1e6, 1),
            "growth_at_end_of_hold_mb": round(held_growth / 1e6, 1),
            "settled_growth_mb": round((rss_bytes(pid) - before) / 1e6, 1)}


def hostile_json(size: int = 8 * MIB - 64) -> bytes:
    unit = b"[[]],"
    return b'{"pixels": [' + unit * ((size - 16) // len(unit)) + b"[[]]]}"


async def attack_json(port: int, count: int = 4) -> dict:
    import httpx2

    body = hostile_json()
    digit = json.dumps({"pixels": (np.eye(28) * 255).astype(int).tolist()})
    url = f"http://127.0.0.1:{port}"
    health, ordinary = [], []
    async with httpx2.AsyncClient(base_url=url, timeout=120) as client:
        async def hostile() -> int:
            response = await client.post("/predict", content=body,
                                         headers={"content-type": "application/json"})
            return response.status_code

        async def probe(path: str, record: list[float]) -> None:
            while not done.is_set():
                start = time.perf_counter()
                if path == "/health":
                    await client.get(path)
                else:
                    await client.post(path, content=digit,
                                      headers={"content-type": "application/json"})
                record.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

        done = asyncio.Event()
        probes = [asyncio.create_task(probe("/health", health)),
                  asyncio.create_task(probe("/predict", ordinary))]
        await asyncio.sleep(0.3)
        start = time.perf_counter()
        statuses = await asyncio.gather(*(hostile() for _ in range(count)))
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.3)
        done.set()
        await asyncio.gather(*probes)

    def summary(seconds: list[float]) -> dict:
        return {"max_ms": round(max(seconds) * 1000, 1),
                "p50_ms": round(float(np.median(seconds)) * 1000, 1), "count": len(seconds)}

    return {"bodies": count, "body_bytes": len(body), "statuses": sorted(statuses),
            "seconds": round(elapsed, 2), "health": summary(health),
            "ordinary_predict": summary(ordinary)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="default: an untrained small ONNX model")
    parser.add_argument("--hold", type=float, default=30.0,
                        help="seconds the unfinished uploads are held at most")
    parser.add_argument("--only", choices=("pictures", "unfinished", "json"), action="append")
    parser.add_argument("--name", default="serve_hostile",
                        help="results file benchmarks/results/NAME.json")
    args = parser.parse_args()
    attacks = args.only or ["pictures", "unfinished", "json"]
    results: dict = {"attacks": {}}
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as folder:
        model = args.model or small_onnx_model(Path(folder))
        results["model"] = str(args.model) if args.model else "untrained small dense, ONNX"
        log_path = Path(folder) / "server.log"
        with log_path.open("w") as log:
            for attack in attacks:  # a fresh server per attack: growth is measured from idle
                port = serve_latency.free_port()
                process = start_server(model, port, log)
                try:
                    results["attacks"].setdefault("idle_rss_mb", {})[attack] = round(
                        rss_bytes(process.pid) / 1e6, 1)
                    if attack == "pictures":
                        outcome = attack_pictures(process.pid, port)
                    elif attack == "unfinished":
                        outcome = attack_unfinished(process.pid, port, hold=args.hold)
                    else:
                        outcome = asyncio.run(attack_json(port))
                    results["attacks"][attack] = outcome
                    print(attack, json.dumps(outcome), flush=True)
                finally:
                    process.terminate()
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()
        log_text = log_path.read_text(errors="replace")
        results["server_log"] = {"lines": log_text.count("\n"),
                                 "tracebacks": log_text.count("Traceback")}
    print("server log:", results["server_log"])
    common.write_results(args.name, results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
