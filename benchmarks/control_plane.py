"""The control plane's three strategies, measured: `spike` (fixed at peak vs fixed at average vs autoscaled under a
5x burst), `pool` (16 dedicated replicas vs one pool of 4 places, Zipf popularity) and `zero` (scale from zero, and
a pool member woken from sleep).

Each configuration is a real `modelyard up` (a subprocess, with a generated yard.yaml in a temp dir, on a free
loopback port, MODELYARD_API_KEY set) over simulated engines (profile llama-3.1-8b-h100). The load is open loop:
Poisson arrivals at a rate that changes by phase, each a streamed /v1/completions whose TTFT (first token), TPOT
(mean gap between token chunks) and status are measured. /health is sampled every 0.5 s: ready + starting +
draining replicas are the replica-time. The cluster is always stopped (SIGINT, then kill, then any child left).

    .venv/bin/python benchmarks/control_plane.py spike
    .venv/bin/python benchmarks/control_plane.py pool
    .venv/bin/python benchmarks/control_plane.py zero

Results (summary JSON, gzipped CSVs of requests and /health samples, the control plane's decisions, a PNG) go to
benchmarks/results/control_plane-<YYYYMMDD-HHMM>/ (`--out` to choose).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import hashlib
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from modelyard.fleet.process import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
API_KEY = "bench-key-" + "b" * 24
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
PROFILE = "llama-3.1-8b-h100"
TTFT_SLO_S = 2.0
TPOT_SLO_S = 0.1
HEALTH_EVERY_S = 0.5
REQUEST_TIMEOUT_S = 180.0
PROMPT = "Summarise the plot of a long novel about a lighthouse keeper and the sea in a few sentences."

# spike: one replica is 8 sequences at the profile's step time at its full batch (~20 ms), 128 tokens per answer
# (~2.6 s): 6 in flight per replica (75% of its slots) is its load within the SLO
SPIKE_PARAMS = {"max_num_seqs": 8, "itl_base_s": 0.02}
SPIKE_TOKENS = 128
SPIKE_TARGET = 6.0


# ---------------------------------------------------------------------------------------------------- cluster


class Cluster:
    """One `modelyard up` in a temp dir; `stop()` leaves no process behind."""

    def __init__(self, name: str, models: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"modelyard-bench-{name}-"))
        self.port = free_port()
        self.spec = {"version": 1, "state_dir": str(self.tmp / "state"),
                     "gateway": {"host": "127.0.0.1", "port": self.port, "workers": 1}, "models": models,
                     **(extra or {})}
        self.spec_path = self.tmp / "yard.yaml"
        self.spec_path.write_text(yaml.safe_dump(self.spec, sort_keys=False))
        self.log_path = self.tmp / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.known: dict[int, psutil.Process] = {}  # every descendant seen, killed at the end if still alive
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Cluster:
        env = {**os.environ, "MODELYARD_API_KEY": API_KEY}
        self._log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.code = code_version()  # what this `up` imports
        self.proc = subprocess.Popen([sys.executable, "-m", "modelyard", "up", "-f", str(self.spec_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        return self

    def remember_children(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.known.setdefault(child.pid, child)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float = 240) -> float:
        """Until every model has its desired replicas ready; the seconds it took since `start`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelyard up exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            self.remember_children()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                async with session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    models = (await resp.json(content_type=None))["models"]
                if all(m["ready"] >= m["replicas"] and not m.get("starting") for m in models.values()):
                    return time.monotonic() - self.started_at
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{self.name}: not ready after {timeout_s:g} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is None:
            return
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in self.known.values():  # never leave an engine behind, whatever happened
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        if not self._log.closed:
            self._log.close()
        left = [p.pid for p in self.known.values() if _alive(p)]
        if left:
            print(f"  warning: processes still alive after stop: {left}", file=sys.stderr)
        if not os.environ.get("MODELYARD_BENCH_KEEP"):  # set it to keep the temp dir (yard.yaml, up.log, logs)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def trace(self, model: str) -> bytes:
        path = self.tmp / "state" / "traces" / f"{model}.jsonl"
        return path.read_bytes() if path.exists() else b""


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------------------------------- load


@dataclass
class Record:
    config: str
    model: str
    scheduled_s: float  # from the load's start
    lag_s: float  # sent this late after its scheduled time (the load generator's own delay)
    status: int  # HTTP status; 0: no answer (connection error, timeout)
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    tokens: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def in_slo(self) -> bool:
        return (self.ok and self.ttft_s is not None and self.ttft_s <= TTFT_SLO_S
                and (self.tpot_s or 0.0) <= TPOT_SLO_S)


async def complete(session: aiohttp.ClientSession, url: str, config: str, model: str, max_tokens: int,
                   scheduled_s: float, due: float) -> Record:
    """One streamed completion; `due` is its scheduled perf_counter time."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    sent = time.perf_counter()
    first = last = None
    tokens, status, error, done = 0, 0, "", False
    try:
        async with session.post(url + "/v1/completions", json=body, headers=HEADERS,
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
            status = resp.status
            if status != 200:
                error = (await resp.text())[:200]
            else:
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        done = True
                        break
                    if b'"error"' in line:
                        error = line[6:206].decode(errors="replace")
                        break
                    now = time.perf_counter()
                    first = first if first is not None else now
                    last = now
                    tokens += 1
                if not done and not error:
                    error = "stream ended without [DONE]"
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    end = time.perf_counter()
    ttft = first - sent if first is not None else None
    tpot = (last - first) / (tokens - 1) if first is not None and last is not None and tokens > 1 else None
    return Record(config, model, round(scheduled_s, 4), round(sent - due, 5), status,
                  None if ttft is None else round(ttft, 5), None if tpot is None else round(tpot, 6),
                  round(end - sent, 4), tokens, error)


def poisson(phases: list[tuple[float, float]], pick: Callable[[random.Random], str],
            seed: int) -> list[tuple[float, str]]:
    """Arrival times (seconds from the start) of a Poisson process whose rate is constant within each
    (duration_s, rate) phase, each with the model it asks for."""
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    start = 0.0
    for duration, rate in phases:
        at = start + rng.expovariate(rate)
        while at < start + duration:
            out.append((at, pick(rng)))
            at += rng.expovariate(rate)
        start += duration
    return out


async def drive(session: aiohttp.ClientSession, url: str, config: str, schedule: list[tuple[float, str]],
                max_tokens: int, t0: float) -> list[Record]:
    """Open loop: each request is sent at its time, whatever the ones before it are doing."""
    tasks = []
    for at, model in schedule:
        due = t0 + at
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(complete(session, url, config, model, max_tokens, at, due)))
    return list(await asyncio.gather(*tasks))


class Sampler:
    """/health every 0.5 s, and the control plane's decisions (`control:` lines of up's output) as they appear,
    both timed from `t0` (perf_counter); also the event loop's own lag."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession, t0: float) -> None:
        self.cluster, self.session, self.t0 = cluster, session, t0
        self.health: list[dict[str, Any]] = []
        self.control: list[tuple[float, str]] = []
        self.loop_lag: list[float] = []
        self._offset = cluster.log_path.stat().st_size if cluster.log_path.exists() else 0
        self._buffer = b""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Sampler:
        self._tasks = [asyncio.create_task(self._sample()), asyncio.create_task(self._tail()),
                       asyncio.create_task(self._ticker())]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._read_log()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def _sample(self) -> None:
        while not self._stop.is_set():
            at = self.now()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                async with self.session.get(self.cluster.url + "/health",
                                            timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    models = (await resp.json(content_type=None))["models"]
                for name, m in models.items():
                    self.health.append({"t_s": round(at, 3), "model": name, "desired": m.get("replicas", 0),
                                        "ready": m.get("ready", 0), "starting": m.get("starting", 0),
                                        "draining": m.get("draining", 0), "asleep": m.get("asleep", 0),
                                        "waking": m.get("waking", 0)})
            self.cluster.remember_children()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, at + HEALTH_EVERY_S - self.now()))

    async def _tail(self) -> None:
        while not self._stop.is_set():
            self._read_log()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.25)

    def _read_log(self) -> None:
        with contextlib.suppress(OSError), self.cluster.log_path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        if not data:
            return
        self._offset += len(data)
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        at = self.now()
        for line in lines:
            text = line.decode(errors="replace").strip()
            if text.startswith("control: "):
                self.control.append((round(at, 2), text[len("control: "):]))

    async def _ticker(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.1)
            self.loop_lag.append(time.perf_counter() - before - 0.1)


def replica_seconds(health: list[dict[str, Any]], model: str | None, start: float, end: float,
                    states: tuple[str, ...] = ("ready", "starting", "draining")) -> float:
    """The integral over [start, end] of the replicas in `states` (each sample held until the next)."""
    by_time: dict[float, int] = {}
    for row in health:
        if model is None or row["model"] == model:
            by_time[row["t_s"]] = by_time.get(row["t_s"], 0) + sum(row[s] for s in states)
    times = sorted(by_time)
    total = 0.0
    for i, t in enumerate(times):
        nxt = times[i + 1] if i + 1 < len(times) else end
        lo, hi = max(t, start), min(nxt, end)
        if hi > lo:
            total += by_time[t] * (hi - lo)
    if times and times[0] > start:  # before the first sample: what the first one saw
        total += by_time[times[0]] * (min(times[0], end) - start)
    return total


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summary(records: list[Record], duration_s: float) -> dict[str, Any]:
    ttfts = [r.ttft_s for r in records if r.ok and r.ttft_s is not None]
    tpots = [r.tpot_s for r in records if r.ok and r.tpot_s is not None]
    in_slo = sum(r.in_slo for r in records)
    return {"requests": len(records), "ok": sum(r.ok for r in records), "failed": sum(not r.ok for r in records),
            "in_slo": in_slo, "attainment": in_slo / len(records) if records else None,
            "goodput_rps": in_slo / duration_s if duration_s else None,
            "ttft_p50_s": pct(ttfts, 50), "ttft_p90_s": pct(ttfts, 90), "ttft_p99_s": pct(ttfts, 99),
            "tpot_mean_s": statistics.fmean(tpots) if tpots else None, "tpot_p99_s": pct(tpots, 99),
            "statuses": _count(str(r.status) for r in records)}


def lag_summary(records: list[Record], sampler: Sampler) -> dict[str, Any]:
    lags = [r.lag_s for r in records]
    return {"send_lag_p50_ms": _ms(pct(lags, 50)), "send_lag_p99_ms": _ms(pct(lags, 99)),
            "send_lag_max_ms": _ms(max(lags, default=0.0)), "loop_lag_p99_ms": _ms(pct(sampler.loop_lag, 99)),
            "loop_lag_max_ms": _ms(max(sampler.loop_lag, default=0.0))}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


# ---------------------------------------------------------------------------------------------------- output


class Output:
    def __init__(self, out: Path | None) -> None:
        self.dir = out or RESULTS / f"control_plane-{time.strftime('%Y%m%d-%H%M')}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def json(self, name: str, data: Any) -> None:
        (self.dir / name).write_text(json.dumps(data, indent=2, default=str) + "\n")

    def csv_gz(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        with gzip.open(self.dir / name, "wt", compresslevel=9) as out:
            out.write(buffer.getvalue())

    def text(self, name: str, text: str) -> None:
        (self.dir / name).write_text(text)

    def gz(self, name: str, data: bytes) -> None:
        if data:
            (self.dir / name).write_bytes(gzip.compress(data, 9))


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "load_avg": os.getloadavg()}


def code_version() -> dict[str, Any]:
    """The commit, and what the working tree changes in the package (the code that ran)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    diff = git("diff", "--", "modelyard")
    digest = hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None
    return {"commit": git("rev-parse", "HEAD"), "package_diff_sha256": digest,
            "package_files_changed": git("diff", "--name-only", "--", "modelyard").split()}


def rows(records: list[Record]) -> list[dict[str, Any]]:
    names = [f.name for f in fields(Record)]
    return [{**{n: getattr(r, n) for n in names}, "in_slo": int(r.in_slo)} for r in records]


async def run_config(cluster: Cluster, session: aiohttp.ClientSession, schedule: list[tuple[float, str]],
                     max_tokens: int, duration_s: float,
                     before: Callable[[aiohttp.ClientSession], Any] | None = None) -> dict[str, Any]:
    """Starts the cluster, waits for it, runs the schedule, samples it; the cluster is stopped by the caller."""
    cluster.start()
    ready_s = await cluster.wait_ready(session)
    print(f"  {cluster.name}: ready after {ready_s:.1f} s (port {cluster.port})", flush=True)
    if before is not None:
        await before(session)
    t0 = time.perf_counter() + 0.2
    sampler = Sampler(cluster, session, t0).start()
    cpu0 = cpu_seconds()
    records = await drive(session, cluster.url, cluster.name, schedule, max_tokens, t0)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    await sampler.stop()
    result = summary(records, duration_s)
    print(f"  {cluster.name}: {result['requests']} requests, attainment {result['attainment']:.1%}, "
          f"failed {result['failed']}", flush=True)
    return {"cluster": cluster, "records": records, "sampler": sampler, "ready_s": ready_s, "summary": result,
            "client_cpu_share": cpu / wall if wall else None, "lag": lag_summary(records, sampler),
            "wall_s": wall}


# ---------------------------------------------------------------------------------------------------- spike


def spike_model(replicas: Any, startup_s: float) -> dict[str, Any]:
    return {"name": "chat", "engine": "simulator", "profile": PROFILE,
            "params": {**SPIKE_PARAMS, "startup_s": startup_s}, "replicas": replicas,
            "slo": {"ttft_p90_s": TTFT_SLO_S, "tpot_p90_s": TPOT_SLO_S}, "startup_timeout_s": 240}


async def spike(args: argparse.Namespace, out: Output) -> None:
    rate, base_s, burst_s = args.rate, args.base_s, args.burst_s
    phases = [(base_s, rate), (burst_s, 5 * rate), (base_s, rate)]
    duration = 2 * base_s + burst_s
    service_s = 0.015 + 0.000032 * 20 + (SPIKE_TOKENS - 1) * (SPIKE_PARAMS["itl_base_s"] + 0.000053 * 8)
    peak = math.ceil(5 * rate * service_s / SPIKE_TARGET - 1e-9)
    average = math.ceil(3 * rate * service_s / SPIKE_TARGET - 1e-9)  # the mean rate over the run is 3r
    schedule = poisson(phases, lambda rng: "chat", args.seed)
    configs = [("fixed-peak", spike_model(peak, args.fixed_startup_s)),
               ("fixed-average", spike_model(average, args.fixed_startup_s)),
               ("autoscaled", spike_model({"min": 1, "max": peak, "target_in_flight": SPIKE_TARGET},
                                          args.startup_s))]
    if args.fast_start_s:  # the same policy with a short start: what the start time costs
        configs.append((f"autoscaled-start{args.fast_start_s:g}s",
                        spike_model({"min": 1, "max": peak, "target_in_flight": SPIKE_TARGET}, args.fast_start_s)))
    if args.only:
        configs = [c for c in configs if c[0] in args.only.split(",")]
    print(f"spike: r={rate:g} req/s, 5r={5 * rate:g}; service ~{service_s:.2f} s; peak {peak}, average {average} "
          f"replicas; {len(schedule)} requests per configuration", flush=True)
    results: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for name, model in configs:
            cluster = Cluster(name, [model])
            try:
                results[name] = await run_config(cluster, session, schedule, SPIKE_TOKENS, duration)
                results[name]["trace"] = cluster.trace("chat")
            finally:
                cluster.stop()
    peak_rs = None
    report: dict[str, Any] = {"command": "spike", "args": vars(args), "machine": machine(),
                              "slo": {"ttft_s": TTFT_SLO_S, "tpot_s": TPOT_SLO_S},
                              "model": spike_model("see configs", args.startup_s), "service_s": service_s,
                              "peak_replicas": peak, "average_replicas": average,
                              "oracle_replica_seconds": base_s * 1 * 2 + burst_s * peak, "configs": {}}
    all_records: list[Record] = []
    health_rows: list[dict[str, Any]] = []
    for name, res in results.items():
        sampler: Sampler = res["sampler"]
        rs = replica_seconds(sampler.health, "chat", 0.0, duration)
        if name == "fixed-peak":
            peak_rs = rs
        phases_out = {}
        for label, lo, hi in (("base1", 0, base_s), ("burst", base_s, base_s + burst_s),
                              ("base2", base_s + burst_s, duration)):
            phases_out[label] = summary([r for r in res["records"] if lo <= r.scheduled_s < hi], hi - lo)["attainment"]
        entry = {**res["summary"], "replica_seconds": rs, "ready_after_up_s": res["ready_s"],
                 "attainment_by_phase": phases_out, "client_cpu_share": res["client_cpu_share"], **res["lag"],
                 "control": res["sampler"].control, "spec": res["cluster"].spec["models"][0],
                 "code": res["cluster"].code}
        if name.startswith("autoscaled"):
            entry["timeline"] = spike_timeline(sampler, base_s, res["records"])
        report["configs"][name] = entry
        all_records += res["records"]
        health_rows += [{**row, "config": name} for row in sampler.health]
        out.gz(f"spike-{name}-trace.jsonl.gz", res["trace"])
        out.text(f"spike-{name}-control.txt", "".join(f"{t:8.2f} s  {line}\n" for t, line in sampler.control))
    for entry in report["configs"].values():
        entry["replica_seconds_vs_fixed_peak"] = entry["replica_seconds"] / peak_rs if peak_rs else None
    out.json("spike.json", report)
    out.csv_gz("spike-requests.csv.gz", rows(all_records))
    out.csv_gz("spike-health.csv.gz", health_rows)
    plot_spike(out, results, phases, duration)
    print_table(report["configs"], ["attainment", "replica_seconds", "replica_seconds_vs_fixed_peak", "failed",
                                    "ttft_p90_s", "send_lag_p99_ms"])


def spike_timeline(sampler: Sampler, burst_at: float, records: list[Record]) -> dict[str, Any]:
    """When the autoscaler reacted to the burst, when the new replicas served, and the misses in between."""
    up = [t for t, line in sampler.control if ": scale " in line and t >= burst_at - 1]
    running: dict[float, int] = {}
    for row in sampler.health:
        running[row["t_s"]] = row["ready"]
    ready_times = sorted(running)
    first_new = next((t for t in ready_times if t >= burst_at and running[t] >= 2), None)
    top = max((running[t] for t in ready_times if t >= burst_at), default=0)
    all_ready = next((t for t in ready_times if t >= burst_at and running[t] >= top), None)
    burst = [r for r in records if r.scheduled_s >= burst_at]
    before = [r for r in burst if all_ready is not None and r.scheduled_s < all_ready]
    return {"burst_at_s": burst_at, "first_scale_up_s": up[0] if up else None,
            "first_new_replica_ready_s": first_new, "max_ready": top, "max_ready_at_s": all_ready,
            "requests_before_max_ready": len(before), "misses_before_max_ready": sum(not r.in_slo for r in before),
            "misses_after_max_ready": sum(not r.in_slo for r in burst if r not in before)}


def plot_spike(out: Output, results: dict[str, dict[str, Any]], phases: list[tuple[float, float]],
               duration: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name, res in results.items():
        health = res["sampler"].health
        top.step([h["t_s"] for h in health], [h["ready"] + h["starting"] + h["draining"] for h in health],
                 where="post", label=f"{name} (running)")
        records = res["records"]
        bottom.scatter([r.scheduled_s for r in records], [r.ttft_s if r.ok and r.ttft_s else 200 for r in records],
                       s=3, alpha=0.5, label=name)
    rate_axis = top.twinx()
    edges, rates, start = [], [], 0.0
    for length, rate in phases:
        edges += [start, start + length]
        rates += [rate, rate]
        start += length
    rate_axis.plot(edges, rates, color="grey", linestyle=":", label="offered rate")
    rate_axis.set_ylabel("offered req/s")
    top.set_ylabel("replicas (ready+starting+draining)")
    top.legend(loc="upper left", fontsize=8)
    bottom.axhline(TTFT_SLO_S, color="red", linewidth=0.8)
    bottom.set_yscale("log")
    bottom.set_ylabel("TTFT s (failed: 200)")
    bottom.set_xlabel("seconds from the load's start")
    bottom.set_xlim(0, duration)
    bottom.legend(loc="upper left", fontsize=8, markerscale=4)
    fig.tight_layout()
    fig.savefig(out.dir / "spike.png", dpi=90)
    plt.close(fig)


def print_table(configs: dict[str, dict[str, Any]], keys: list[str]) -> None:
    print("| config | " + " | ".join(keys) + " |")
    for name, entry in configs.items():
        cells = []
        for key in keys:
            value = entry.get(key)
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        print(f"| {name} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------------------- pool


def pool_models(count: int, startup_s: float, wake_s: float) -> list[dict[str, Any]]:
    return [{"name": f"m{i:02d}", "engine": "simulator", "profile": PROFILE,
             "params": {"startup_s": startup_s, "wake_level1_s": wake_s}, "startup_timeout_s": 240}
            for i in range(count)]


async def pool(args: argparse.Namespace, out: Output) -> None:
    count, rate, duration = args.models, args.rate, args.duration_s
    names = [f"m{i:02d}" for i in range(count)]
    weights = [1.0 / (i + 1) ** args.zipf for i in range(count)]
    share = [w / sum(weights) for w in weights]
    schedule = poisson([(duration, rate)], lambda rng: rng.choices(names, weights)[0], args.seed)
    configs: list[tuple[str, dict[str, Any] | None]] = [
        ("dedicated", None),
        ("pool", {"pools": [{"name": "shared", "slots": args.slots, "members": names}]})]
    if args.min_awake_s is not None:  # the same pool with a shorter min_awake_s: more swaps per second
        configs.append((f"pool-min-awake-{args.min_awake_s:g}s", {"pools": [
            {"name": "shared", "slots": args.slots, "members": names, "min_awake_s": args.min_awake_s}]}))
    if args.only:
        configs = [c for c in configs if c[0] in args.only.split(",")]
    print(f"pool: {count} models, Zipf({args.zipf:g}), {rate:g} req/s for {duration:g} s "
          f"({len(schedule)} requests); top model {share[0]:.1%} of them", flush=True)
    results: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for name, extra in configs:
            cluster = Cluster(name, pool_models(count, args.startup_s, args.wake_s), extra)

            async def warm(session: aiohttp.ClientSession, cluster: Cluster = cluster) -> None:
                """Every member loaded once (then asleep or awake), as a pool is after its first use: not measured."""
                started = time.monotonic()
                due = time.perf_counter()
                warmed = await asyncio.gather(*(complete(session, cluster.url, "warm-up", m, 8, 0, due)
                                                for m in names))
                await cluster.wait_ready(session)
                bad = [r for r in warmed if not r.ok]
                print(f"  {cluster.name}: warm-up {time.monotonic() - started:.1f} s, {len(bad)} failed", flush=True)
                await asyncio.sleep(args.settle_s)

            try:
                results[name] = await run_config(cluster, session, schedule, args.tokens, duration,
                                                 warm if extra is not None else None)
                results[name]["spec_extra"] = extra
            finally:
                cluster.stop()
    report: dict[str, Any] = {"command": "pool", "args": vars(args), "machine": machine(),
                              "slo": {"ttft_s": TTFT_SLO_S, "tpot_s": TPOT_SLO_S},
                              "share": dict(zip(names, share, strict=True)),
                              "models": pool_models(count, args.startup_s, args.wake_s)[:1], "configs": {}}
    all_records: list[Record] = []
    health_rows: list[dict[str, Any]] = []
    for name, res in results.items():
        sampler: Sampler = res["sampler"]
        actions = _count(line.split(" ")[1] for _, line in sampler.control)
        top = set(names[:args.slots])
        entry = {**res["summary"], "lost_or_errored": res["summary"]["failed"],
                 "sleeps": actions.get("sleep", 0), "wakes": actions.get("wake", 0), "starts": actions.get("start", 0),
                 "stops": actions.get("stop", 0), "control_actions": actions,
                 "attainment_top_models": summary([r for r in res["records"] if r.model in top],
                                                  duration)["attainment"],
                 "attainment_other_models": summary([r for r in res["records"] if r.model not in top],
                                                    duration)["attainment"],
                 "awake_replica_seconds": replica_seconds(sampler.health, None, 0.0, duration,
                                                          ("ready", "starting", "draining", "waking")),
                 "ready_after_up_s": res["ready_s"], "client_cpu_share": res["client_cpu_share"], **res["lag"]}
        entry["swaps"] = entry["sleeps"] + entry["wakes"]
        entry.update(by_residency(res["records"], sampler.health))
        entry["room_to_wake_s"] = room_to_wake(sampler.control)
        entry["code"] = res["cluster"].code
        report["configs"][name] = entry
        all_records += res["records"]
        health_rows += [{**row, "config": name} for row in sampler.health]
        out.text(f"pool-{name}-control.txt", "".join(f"{t:8.2f} s  {line}\n" for t, line in sampler.control))
    dedicated = report["configs"].get("dedicated", {}).get("attainment")
    for name, entry in report["configs"].items():
        if name != "dedicated" and dedicated:
            entry["attainment_vs_dedicated"] = entry["attainment"] / dedicated
    out.json("pool.json", report)
    out.csv_gz("pool-requests.csv.gz", rows(all_records))
    out.csv_gz("pool-health.csv.gz", health_rows)
    plot_pool(out, results, duration)
    print_table(report["configs"], ["attainment", "goodput_rps", "lost_or_errored", "swaps", "ttft_p50_s",
                                    "ttft_p99_s", "awake_replica_seconds", "send_lag_p99_ms"])


def by_residency(records: list[Record], health: list[dict[str, Any]]) -> dict[str, Any]:
    """Attainment of the requests that found their model ready (at the last /health sample before them) and of
    those that found it asleep, waking or draining."""
    seen: dict[str, list[tuple[float, int]]] = {}
    for row in health:
        seen.setdefault(row["model"], []).append((row["t_s"], row["ready"]))
    awake, not_awake = [], []
    for record in records:
        before = [ready for t, ready in seen.get(record.model, []) if t <= record.scheduled_s]
        (awake if before and before[-1] > 0 else not_awake).append(record)
    return {"requests_found_awake": len(awake), "attainment_found_awake": summary(awake, 1)["attainment"],
            "requests_found_not_awake": len(not_awake),
            "attainment_found_not_awake": summary(not_awake, 1)["attainment"],
            "ttft_p50_found_not_awake_s": summary(not_awake, 1)["ttft_p50_s"]}


def room_to_wake(control: list[tuple[float, str]]) -> dict[str, Any]:
    """From a member's sleep "to make room for X" to X's wake: how long a swap waits for the room."""
    pending: dict[str, float] = {}
    gaps = []
    for at, line in control:
        words = line.split(" ")
        if len(words) > 1 and words[1] == "sleep" and "make room for " in line:
            pending.setdefault(line.rsplit(" ", 1)[1], at)
        elif len(words) > 1 and words[1] == "wake" and words[0].rstrip(":") in pending:
            gaps.append(at - pending.pop(words[0].rstrip(":")))
    return {"swaps": len(gaps), "p50_s": pct(gaps, 50), "p90_s": pct(gaps, 90), "max_s": max(gaps, default=None)}


def plot_pool(out: Output, results: dict[str, dict[str, Any]], duration: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in results.items():
        ttfts = sorted(r.ttft_s for r in res["records"] if r.ok and r.ttft_s is not None)
        left.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], label=name)
        awake: dict[float, int] = {}
        for row in res["sampler"].health:
            awake[row["t_s"]] = awake.get(row["t_s"], 0) + row["ready"] + row["waking"] + row["starting"]
        times = sorted(awake)
        right.step(times, [awake[t] for t in times], where="post", label=name)
    left.axvline(TTFT_SLO_S, color="red", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("TTFT s")
    left.set_ylabel("share of requests")
    left.legend()
    right.set_xlabel("seconds from the load's start")
    right.set_ylabel("replicas awake (ready + waking + starting)")
    right.set_xlim(0, duration)
    right.legend()
    fig.tight_layout()
    fig.savefig(out.dir / "pool.png", dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- zero


async def zero(args: argparse.Namespace, out: Output) -> None:
    startup, tokens = args.startup_s, args.tokens
    lazy = {"name": "lazy", "engine": "simulator", "profile": PROFILE, "params": {"startup_s": startup},
            "replicas": {"min": 0, "max": 1, "scale_to_zero_after_s": args.idle_s}, "startup_timeout_s": 240}
    members = [{"name": n, "engine": "simulator", "profile": PROFILE,
                "params": {"startup_s": args.member_startup_s, "wake_level1_s": args.wake_s}} for n in ("pa", "pb")]
    extra = {"pools": [{"name": "pair", "slots": 1, "members": ["pa", "pb"], "min_awake_s": 0}]}
    cluster = Cluster("zero", [lazy, *members], extra)
    steps: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        try:
            cluster.start()
            ready_s = await cluster.wait_ready(session)
            t0 = time.perf_counter()
            sampler = Sampler(cluster, session, t0).start()

            async def step(label: str, model: str) -> Record:
                record = await complete(session, cluster.url, "zero", model, tokens, time.perf_counter() - t0,
                                        time.perf_counter())
                steps.append({"step": label, **asdict(record), "ok": record.ok})
                print(f"  {label}: {record.status} e2e {record.e2e_s:.2f} s, TTFT {record.ttft_s} s", flush=True)
                return record

            async def replicas(model: str) -> int:
                async with session.get(cluster.url + "/health") as resp:
                    return int((await resp.json(content_type=None))["models"][model]["replicas"])

            await step("lazy: first request, from zero", "lazy")
            for i in range(3):
                await step(f"lazy: warm request {i + 1}", "lazy")
            await step("pb: first request (cold start: pb was never started; pa goes to sleep)", "pb")
            await step("pa: request while asleep (wake)", "pa")
            await step("pb: request while asleep (wake)", "pb")
            await step("pa: request while asleep (wake), again", "pa")
            for i in range(3):
                await step(f"pa: warm request {i + 1}", "pa")
            went = time.perf_counter()
            while await replicas("lazy") != 0 and time.perf_counter() - went < args.idle_s + 30:
                await asyncio.sleep(0.5)
            back_to_zero = time.perf_counter() - went
            await step("lazy: first request after it went back to zero", "lazy")
            await sampler.stop()
        finally:
            cluster.stop()
    warm_lazy = [s["e2e_s"] for s in steps if s["step"].startswith("lazy: warm")]
    warm_pa = [s["e2e_s"] for s in steps if s["step"].startswith("pa: warm")]
    own = statistics.fmean(warm_lazy)
    own_member = statistics.fmean(warm_pa)
    for s in steps:
        base = own if s["model"] == "lazy" else own_member
        expected = startup if "zero" in s["step"] else args.member_startup_s if "cold" in s["step"] else \
            args.wake_s if "wake" in s["step"] else 0.0
        s["expected_s"] = round(expected + base, 3)  # the model's own start or wake + its own latency
        s["overhead_s"] = round(s["e2e_s"] - expected - base, 3)
    report = {"command": "zero", "args": vars(args), "machine": machine(), "spec": cluster.spec,
              "ready_after_up_s": ready_s, "own_latency_s": own, "member_own_latency_s": own_member,
              "back_to_zero_after_last_request_s": back_to_zero + 0.0, "errors": sum(not s["ok"] for s in steps),
              "steps": steps, "control": sampler.control}
    out.json("zero.json", report)
    out.text("zero-control.txt", "".join(f"{t:8.2f} s  {line}\n" for t, line in sampler.control))
    print("| step | e2e s | TTFT s | expected (start or wake + own) s | overhead s | status |")
    for s in steps:
        print(f"| {s['step']} | {s['e2e_s']:.2f} | {s['ttft_s']} | {s['expected_s']:.2f} | {s['overhead_s']:+.2f} "
              f"| {s['status']} |")


# ---------------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: a new timestamped one)")
    parser.add_argument("--seed", type=int, default=12)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("spike", help="fixed at peak vs fixed at average vs autoscaled, under a 5x burst")
    s.add_argument("--rate", type=float, default=1.5, help="base rate r (req/s); the burst is 5r")
    s.add_argument("--base-s", type=float, default=60.0)
    s.add_argument("--burst-s", type=float, default=120.0)
    s.add_argument("--startup-s", type=float, default=30.0, help="replica start time of the autoscaled model")
    s.add_argument("--fixed-startup-s", type=float, default=2.0,
                   help="of the fixed ones: they are all ready before the load, so it is never on the measured path")
    s.add_argument("--fast-start-s", type=float, default=2.0,
                   help="a fourth configuration: autoscaled with this start time (0: none)")
    s.add_argument("--only", default="", help="comma-separated configurations to run")
    p = sub.add_parser("pool", help="16 dedicated replicas vs one pool of 4 places")
    p.add_argument("--models", type=int, default=16)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=4.0, help="total req/s")
    p.add_argument("--duration-s", type=float, default=120.0)
    p.add_argument("--min-awake-s", type=float, default=1.0,
                   help="a third configuration: the pool with this min_awake_s (the default is 5 s)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--startup-s", type=float, default=10.0, help="only in the unmeasured warm-up")
    p.add_argument("--wake-s", type=float, default=0.5, help="wake_level1_s")
    p.add_argument("--settle-s", type=float, default=6.0, help="after the warm-up (min_awake_s is 5 s)")
    p.add_argument("--only", default="")
    z = sub.add_parser("zero", help="scale from zero, and a pool member woken from sleep")
    z.add_argument("--startup-s", type=float, default=30.0)
    z.add_argument("--member-startup-s", type=float, default=5.0)
    z.add_argument("--wake-s", type=float, default=0.5)
    z.add_argument("--idle-s", type=float, default=10.0, help="scale_to_zero_after_s")
    z.add_argument("--tokens", type=int, default=32)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Output(args.out)
    args.code_at_start = code_version()  # the owner may edit the package while a run goes on: both are recorded
    diff = subprocess.run(["git", "diff", "--", "modelyard"], cwd=ROOT, capture_output=True, check=False).stdout
    out.gz(f"{args.command}-package.diff.gz", diff)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    runner = {"spike": spike, "pool": pool, "zero": zero}[args.command]
    started = time.monotonic()
    asyncio.run(runner(args, out))
    print(f"{args.command}: {time.monotonic() - started:.0f} s; results in {out.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
