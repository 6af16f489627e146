"""`mnist-pipeline serve` (real uvicorn, loopback) under hostile traffic: memory and stalls.

    .venv/bin/python benchmarks/serve_hostile.py                 # an untrained small model
    .venv/bin/python benchmarks/serve_hostile.py --model models/model.onnx --name NAME
    git worktree add /tmp/before HEAD~5      # a server of before a change, measured the same:
    .venv/bin/python benchmarks/serve_hostile.py --only flood --checkout /tmp/before --name B

The server is the real command in its own process; its memory is read from
/proc/<pid>/status (VmRSS), sampled every 10 ms, its CPU time from /proc/<pid>/stat. Four
attacks, one after the other, each on a fresh server, bounded in count and time, all to
127.0.0.1:

1. pictures: 8 concurrent uploads of the worst cheap picture found by the probe round, a
   6300x6300 RGBA PNG (transparent background, black strokes, optimized: ~175 KB, under the
   40-megapixel limit). Peak and settled RSS growth, statuses, seconds.
2. unfinished: 200 connections that declare an 8 MiB body and send all but one byte, then
   wait (at most --hold seconds). Peak RSS growth, and how many the server cut off (408,
   503, or closed) within that time.
3. json: 4 concurrent JSON bodies of 8 MiB of ``[[]],[[]],...`` (cheap to send, costly to
   parse), while /health and an ordinary one-digit JSON request are sent every 50 ms:
   their worst and median latency.
4. flood: 200 connections that send nothing and 200 that send a request's headers a byte
   every 2 s, held --flood-hold seconds, while /health and a one-digit JSON /predict are
   sent every 100 ms on new connections: their statuses and latency, the server's peak RSS
   growth and CPU seconds, and when the server closed the held connections.

``--checkout PATH`` runs the server from another checkout of the project (a ``git worktree``
of an older commit), so that before and after a change are measured by the same client.
``--smoke``: every attack, a few connections and small bodies, in seconds; measures nothing.

Writes benchmarks/results/serve_hostile.json (``--name``: another name).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
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

from mnist_pipeline import testing

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


def start_server(model: Path, port: int, log, checkout: Path | None = None
                 ) -> subprocess.Popen:
    """The real command serving ``model``, from ``checkout`` (another worktree) if given."""
    command = [sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--model", str(model),
               "--port", str(port)]
    if checkout is None:
        return testing.start_server(command, port, log)
    # `python -m` puts the working folder first on sys.path: the other checkout's package.
    process = subprocess.Popen(command, cwd=checkout, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(checkout)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if post_raw(port, b"", "", 1, "GET /health")[0] == 200:
                return process
        except OSError:
            time.sleep(0.2)
    testing.stop_server(process)
    raise RuntimeError(f"the server of {checkout} did not answer /health")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_raw(port: int, body: bytes, content_type: str, timeout: float,
             request: str = "POST /predict") -> tuple[int, float]:
    """One request over a plain socket: (status or 0 when cut, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(f"{request} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                           f"{content_type}\r\nContent-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n".encode() + body)
        try:
            head = connection.recv(64)
        except OSError:
            head = b""
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - start


def attack_pictures(pid: int, port: int, count: int = 8, side: int = 6300) -> dict:
    picture = testing.worst_png(side)
    before = testing.rss_bytes(pid)
    results: list[tuple[int, float]] = []
    with testing.PeakRss(pid) as sampler:
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
            "settled_growth_mb": round((testing.rss_bytes(pid) - before) / 1e6, 1)}


def attack_unfinished(pid: int, port: int, count: int = 200, declared: int = 8 * MIB,
                      hold: float = 30.0) -> dict:
    """``count`` sockets each declaring ``declared`` bytes and sending ``declared - 1``."""
    body = memoryview(b"\0" * (declared - 1))
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sockets = []
    before = testing.rss_bytes(pid)
    start = time.perf_counter()
    answers: dict[str, int] = {}
    with testing.PeakRss(pid) as sampler:
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
            held_growth = testing.rss_bytes(pid) - before
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
            "settled_growth_mb": round((testing.rss_bytes(pid) - before) / 1e6, 1)}


def hostile_json(size: int = 8 * MIB - 64) -> bytes:
    unit = b"[[]],"
    return b'{"pixels": [' + unit * ((size - 16) // len(unit)) + b"[[]]]}"


async def attack_json(port: int, count: int = 4, size: int = 8 * MIB - 64) -> dict:
    import httpx2

    body = hostile_json(size)
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


def attack_flood(pid: int, port: int, idle: int = 200, slow: int = 200, hold: float = 20.0,
                 drip_seconds: float = 2.0) -> dict:
    """``idle`` sockets that send nothing and ``slow`` ones that send headers a byte every
    ``drip_seconds``, held ``hold`` s while /health and /predict are probed every 100 ms."""
    digit = json.dumps({"pixels": (np.eye(28) * 255).astype(int).tolist()}).encode()
    before, cpu_before = testing.rss_bytes(pid), cpu_seconds(pid)
    probes: dict[str, list[tuple[int, float]]] = {"health": [], "predict": []}
    closed_after: dict[str, list[float]] = {"idle": [], "slow": []}
    kind_of: dict[socket.socket, str] = {}
    done = threading.Event()

    def probe() -> None:
        while not done.wait(0.1):
            for name, body, request in (("health", b"", "GET /health"),
                                        ("predict", digit, "POST /predict")):
                try:
                    probes[name].append(post_raw(port, body, "application/json", 10, request))
                except OSError:
                    probes[name].append((0, 10.0))

    start = time.perf_counter()
    with testing.PeakRss(pid) as sampler:
        try:
            kinds = itertools.chain(*itertools.zip_longest(["idle"] * idle, ["slow"] * slow))
            for kind in filter(None, kinds):  # idle and slow ones alternate
                connection = socket.create_connection(("127.0.0.1", port), timeout=5)
                if kind == "slow":
                    connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                kind_of[connection] = kind
                connection.setblocking(False)
            opened = time.perf_counter() - start
            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            open_ = set(kind_of)
            next_drip = time.perf_counter() + drip_seconds
            while time.perf_counter() < start + hold and open_:
                readable, _, _ = select.select(list(open_), [], [], 0.1)
                for connection in readable:
                    try:
                        data = connection.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # closed by the server
                        closed_after[kind_of[connection]].append(time.perf_counter() - start)
                        open_.discard(connection)
                if time.perf_counter() >= next_drip:
                    next_drip += drip_seconds
                    for connection in open_:
                        if kind_of[connection] == "slow":
                            with contextlib.suppress(OSError):  # closed meanwhile
                                connection.send(b"x")
            still_open = {kind: sum(kind_of[c] == kind for c in open_) for kind in closed_after}
        finally:
            done.set()
            for connection in kind_of:
                connection.close()
        elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu_before

    def latency(results: list[tuple[int, float]]) -> dict:
        seconds = [elapsed for _, elapsed in results] or [0.0]
        statuses: dict[str, int] = {}
        for status, _ in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {"statuses": statuses, "count": len(results),
                "p50_ms": round(float(np.median(seconds)) * 1000, 1),
                "max_ms": round(max(seconds) * 1000, 1)}

    def closing(times: list[float]) -> dict:
        return {"closed": len(times),
                "median_s": round(float(np.median(times)), 1) if times else None,
                "last_s": round(max(times), 1) if times else None}

    return {"idle": idle, "slow": slow, "hold_s": hold, "seconds_to_open": round(opened, 2),
            "health": latency(probes["health"]), "predict": latency(probes["predict"]),
            "idle_closed": closing(closed_after["idle"]),
            "slow_closed": closing(closed_after["slow"]), "still_open_at_end": still_open,
            "seconds": round(elapsed, 1), "server_cpu_s": round(cpu, 2),
            "peak_growth_mb": round(sampler.growth_mb, 1),
            "settled_growth_mb": round((testing.rss_bytes(pid) - before) / 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="default: an untrained small ONNX model")
    parser.add_argument("--hold", type=float, default=30.0,
                        help="seconds the unfinished uploads are held at most")
    parser.add_argument("--flood-hold", type=float, default=20.0,
                        help="seconds the idle and slow-header connections are held")
    parser.add_argument("--checkout", type=Path,
                        help="serve from this checkout of the project (e.g. a git worktree "
                        "of an older commit) instead of this one")
    parser.add_argument("--only", choices=ATTACKS, action="append")
    parser.add_argument("--name", default="serve_hostile",
                        help="results file benchmarks/results/NAME.json")
    common.add_smoke(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
    attacks = args.only or list(ATTACKS)
    results: dict = {"attacks": {}, "checkout": str(args.checkout or "this one")}
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as folder:
        model = args.model or small_onnx_model(Path(folder))
        results["model"] = str(args.model) if args.model else "untrained small dense, ONNX"
        log_path = Path(folder) / "server.log"
        with log_path.open("w") as log:
            for attack in attacks:  # a fresh server per attack: growth is measured from idle
                port = testing.free_port()
                process = start_server(model, port, log, args.checkout)
                try:
                    results["attacks"].setdefault("idle_rss_mb", {})[attack] = round(
                        testing.rss_bytes(process.pid) / 1e6, 1)
                    outcome = run_attack(attack, process.pid, port, args)
                    results["attacks"][attack] = outcome
                    print(attack, json.dumps(outcome), flush=True)
                finally:
                    testing.stop_server(process)
        log_text = log_path.read_text(errors="replace")
        results["server_log"] = {"lines": log_text.count("\n"),
                                 "tracebacks": log_text.count("Traceback")}
    print("server log:", results["server_log"])
    common.write_results(args.name, results)


ATTACKS = ("pictures", "unfinished", "json", "flood")


def run_attack(attack: str, pid: int, port: int, args: argparse.Namespace) -> dict:
    """One attack at full size, or in seconds with --smoke."""
    small = args.smoke
    if attack == "pictures":
        return attack_pictures(pid, port, count=2 if small else 8, side=600 if small else 6300)
    if attack == "unfinished":
        return attack_unfinished(pid, port, count=4 if small else 200,
                                 declared=64 * 1024 if small else 8 * MIB,
                                 hold=1.0 if small else args.hold)
    if attack == "json":
        return asyncio.run(attack_json(port, count=1 if small else 4,
                                       size=64 * 1024 if small else 8 * MIB - 64))
    return attack_flood(pid, port, idle=5 if small else 200, slow=5 if small else 200,
                        hold=1.5 if small else args.flood_hold)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
