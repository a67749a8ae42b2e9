"""How many concurrent streams one simulator process sustains on one core, and how true its timings stay.

Starts `python -m modelyard.simulator` pinned to one core (taskset), drives N concurrent streamed
/v1/completions from this process pinned to another core (raw asyncio sockets on uvloop, so the client is cheap),
and compares the inter-token latency that the client sees with the model's. Writes a JSON file under
benchmarks/results/.

    .venv/bin/python benchmarks/simulator_capacity.py --streams 500 --tokens 250 --itl-ms 20
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import uvloop

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(port: int, itl_s: float, streams: int, core: int) -> subprocess.Popen[bytes]:
    params = {"itl_base_s": itl_s, "itl_per_seq_s": 0, "max_num_seqs": streams * 2, "kv_blocks": 1_000_000,
              "prefill_overhead_s": 0, "prefill_s_per_token": 0, "max_model_len": 100_000}
    argv = ["taskset", "-c", str(core), sys.executable, "-m", "modelyard.simulator", "--port", str(port),
            "--model", "bench", "--profile", "tiny-cpu"]
    for key, value in params.items():
        argv += ["--param", f"{key}={value}"]
    return subprocess.Popen(argv)


async def wait_ready(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("simulator did not start")


async def one_stream(port: int, tokens: int, start_delay: float) -> list[tuple[float, int]]:
    """Arrival time and token count of every read of one streamed completion."""
    await asyncio.sleep(start_delay)
    body = json.dumps({"model": "bench", "prompt": "measure the simulator", "max_tokens": tokens,
                       "stream": True}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    reads: list[tuple[float, int]] = []
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            reads.append((time.perf_counter(), data.count(b"data: {")))
            if b"[DONE]" in data:
                break
    finally:
        writer.close()
    return reads


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(all_reads: list[list[tuple[float, int]]], itl_s: float, tokens: int) -> dict[str, object]:
    stream_means, gaps, coalesced, complete = [], [], 0, 0
    for reads in all_reads:
        token_reads = [(t, k) for t, k in reads if k]
        n = sum(k for _, k in token_reads)
        if n == tokens:
            complete += 1
        if n < 2:
            continue
        stream_means.append((token_reads[-1][0] - token_reads[0][0]) / (n - 1))
        for (t0, _), (t1, k1) in zip(token_reads, token_reads[1:], strict=False):
            gaps.append(t1 - t0)
            coalesced += k1 - 1
            gaps.extend([0.0] * (k1 - 1))
    ms = 1000.0
    mean = statistics.fmean(stream_means)
    return {
        "model_itl_ms": itl_s * ms, "streams_complete": complete, "streams": len(all_reads),
        "mean_itl_ms": round(mean * ms, 3), "mean_itl_error_pct": round(100 * (mean - itl_s) / itl_s, 2),
        "p50_gap_ms": round(percentile(gaps, 0.5) * ms, 3), "p99_gap_ms": round(percentile(gaps, 0.99) * ms, 3),
        "p1_gap_ms": round(percentile(gaps, 0.01) * ms, 3),
        "coalesced_tokens_pct": round(100 * coalesced / max(1, len(gaps)), 2),
    }


async def drive(port: int, streams: int, tokens: int, ramp_s: float) -> list[list[tuple[float, int]]]:
    tasks = [one_stream(port, tokens, ramp_s * i / streams) for i in range(streams)]
    return list(await asyncio.gather(*tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=250, help="tokens per stream")
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--ramp-s", type=float, default=1.0, help="spread the stream starts over this long")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "simulator_capacity.json")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_core})
    port = free_port()
    itl_s = args.itl_ms / 1000.0
    server = start_server(port, itl_s, args.streams, args.server_core)
    try:
        uvloop.run(wait_ready(port))
        proc = psutil.Process(server.pid)
        cpu0, wall0 = proc.cpu_times(), time.perf_counter()
        reads = uvloop.run(drive(port, args.streams, args.tokens, args.ramp_s))
        cpu1, wall1 = proc.cpu_times(), time.perf_counter()
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = summarize(reads, itl_s, args.tokens)
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    result.update({
        "tokens_per_stream": args.tokens, "wall_s": round(wall1 - wall0, 2),
        "server_cpu_pct_of_one_core": round(100 * busy / (wall1 - wall0), 1),
        "tokens_per_s": round(args.streams * args.tokens / (wall1 - wall0)),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"load avg before {os.getloadavg()[0]:.2f}",
        "command": " ".join(["benchmarks/simulator_capacity.py", *sys.argv[1:]]),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
