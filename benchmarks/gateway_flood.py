"""Hostile connections against one gateway worker, and what its legitimate clients see meanwhile (docs/reliability.md).

`modelyard up` (gateway.workers: 1, engine openai in front of benchmarks/mock_upstream.py) is loaded by a few
legitimate clients (keep-alive, authenticated, non-streamed completions) for a baseline, then again while:
- HALF_OPEN connections (default 10,000) each send half a request head and nothing more, and reconnect whenever the
  gateway closes them (its head timeout, or its connection bound making room);
- oversized heads (default 1 GiB in total: 1,024 requests with a 1 MiB header each, 16 at a time) are sent.
The worker's RSS (psutil) before, its peak during, and after; the legitimate requests' success and latency during,
as a ratio against the baseline of the same run. Raises its own open-files limit to the hard limit (both it and the
gateway need one descriptor per connection); prints what it could get.

usage: python benchmarks/gateway_flood.py [--half-open 10000] [--oversized-mib 1024] [--seconds 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

KEY = "flood-key-" + "k" * 24
PARTIAL_HEAD = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Slow: "
LEGIT_CLIENTS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class HalfOpen(asyncio.Protocol):
    """Sends half a head, then nothing; tells the flood when the gateway closed it."""

    def __init__(self, flood: Flood) -> None:
        self.flood = flood

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(PARTIAL_HEAD)  # type: ignore[attr-defined]
        self.flood.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.flood.open -= 1
        self.flood.closed_by_gateway += 1
        self.flood.respawn()


class Flood:
    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.open = self.closed_by_gateway = self.failed = 0
        self.running = True
        self.pending: set[asyncio.Task[Any]] = set()

    async def _one(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: HalfOpen(self), "127.0.0.1", self.port)
        except OSError:
            self.failed += 1
            await asyncio.sleep(0.1)
            self.respawn()

    def respawn(self) -> None:
        if self.running:
            task = asyncio.get_running_loop().create_task(self._one())
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def start(self) -> None:
        for batch in range(0, self.target, 500):
            for _ in range(min(500, self.target - batch)):
                self.respawn()
            await asyncio.sleep(0.05)


async def oversized(port: int, total_mib: int, parallel: int = 16) -> dict[str, int]:
    """`total_mib` requests, each with a 1 MiB header: how many were answered 431 (or closed before an answer)."""
    header = b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n"
    answers: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total_mib):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n" + header + b"\r\n")
                line = await asyncio.wait_for(reader.readline(), 30)
                kind = line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1") else "closed"
                writer.close()
            except (OSError, TimeoutError, IndexError):
                kind = "closed"
            answers[kind] = answers.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return answers


async def legit(url: str, seconds: float) -> dict[str, Any]:
    """Keep-alive clients sending completions back to back: success count and latencies."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    body = {"model": "mock", "prompt": "hello", "max_tokens": 4}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    reply = await http.post("/completions", json=body)
                    kind = str(reply.status_code)
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                if kind == "200":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[kind] = errors.get(kind, 0) + 1
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(client() for _ in range(LEGIT_CLIENTS)))
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [0.0] * 99
    return {"ok": len(latencies), "errors": errors, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "req_s": len(latencies) / seconds}


async def sample_rss(proc: psutil.Process, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.2)


async def attack(port: int, url: str, worker: psutil.Process, args: argparse.Namespace) -> dict[str, Any]:
    flood = Flood(port, args.half_open)
    stop, peak = asyncio.Event(), [worker.memory_info().rss]
    sampler = asyncio.create_task(sample_rss(worker, stop, peak))
    await flood.start()
    for _ in range(100):  # until the flood is (nearly) all open
        if flood.open >= args.half_open * 0.95:
            break
        await asyncio.sleep(0.1)
    opened = flood.open
    big = asyncio.create_task(oversized(port, args.oversized_mib))
    during = await legit(url, args.seconds)
    answers = await big
    flood.running = False
    stop.set()
    await sampler
    return {"half_open_target": args.half_open, "half_open_reached": opened, "half_open_at_end": flood.open,
            "closed_by_gateway": flood.closed_by_gateway, "connect_failures": flood.failed,
            "oversized_mib_sent": args.oversized_mib, "oversized_answers": answers, "legit": during,
            "rss_peak_mib": peak[0] / 2**20}


def start_cluster(work: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
    upstream_port, port = free_port(), free_port()
    bench = Path(__file__).parent
    upstream = subprocess.Popen([sys.executable, str(bench / "mock_upstream.py"), "--port", str(upstream_port),
                                 "--tokens", "4", "--itl-ms", "1"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    spec = {"version": 1, "state_dir": str(work / "state"), "gateway": {"host": "127.0.0.1", "port": port,
                                                                         "workers": 1},
            "store": {"record_usage": False},
            "models": [{"name": "mock", "engine": "openai", "urls": [f"http://127.0.0.1:{upstream_port}"],
                        "admission": {"max_concurrency": 10000, "max_queue": 10000}}]}
    (work / "yard.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "MODELYARD_API_KEY": KEY}
    up = subprocess.Popen([sys.executable, "-m", "modelyard", "up", "-f", str(work / "yard.yaml")],
                          stdout=(work / "up.log").open("wb"), stderr=subprocess.STDOUT, env=env)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return up, upstream, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway did not start: {(work / 'up.log').read_text()[-2000:]}")


def gateway_worker(up: subprocess.Popen[bytes]) -> psutil.Process:
    for child in psutil.Process(up.pid).children(recursive=True):
        if "modelyard.gateway.workers" in " ".join(child.cmdline()):
            return child
    raise SystemExit("no gateway worker found")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--half-open", type=int, default=10_000)
    parser.add_argument("--oversized-mib", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    nofile = raise_nofile()
    print(f"open files limit: {nofile}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="modelyard-flood-"))
    up, upstream, port = start_cluster(work)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        worker = gateway_worker(up)
        asyncio.run(legit(url, 3))  # warm-up
        rss_before = worker.memory_info().rss / 2**20
        baseline = asyncio.run(legit(url, args.seconds))
        attacked = asyncio.run(attack(port, url, worker, args))
        time.sleep(15)  # the gateway's head timeout closes what is left of the flood
        rss_after = worker.memory_info().rss / 2**20
        after = asyncio.run(legit(url, 5))
    finally:
        up.terminate()
        up.wait(30)
        upstream.terminate()
        upstream.wait(10)
    result = {"nofile": nofile, "rss_before_mib": rss_before, "baseline": baseline, "attack": attacked,
              "rss_after_mib": rss_after, "after": after,
              "p50_ratio": attacked["legit"]["p50_ms"] / baseline["p50_ms"] if baseline["p50_ms"] else None,
              "p99_ratio": attacked["legit"]["p99_ms"] / baseline["p99_ms"] if baseline["p99_ms"] else None,
              "req_s_ratio": attacked["legit"]["req_s"] / baseline["req_s"] if baseline["req_s"] else None}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "flood.json").write_text(text)
        (args.out / "up.log").write_bytes((work / "up.log").read_bytes())


if __name__ == "__main__":
    main()
