"""The gateway's worker processes, seen from `modelyard up` (the parent): start them, feed them the supervisor's
endpoint table, restart one that dies, stop them first at the end. The worker's side is
modelyard/gateway/workers.py; what travels between them is described there.

Every worker listens on the same host:port with SO_REUSEPORT; the parent holds one more socket in that group,
bound but not listening, so that the port stays taken while a worker restarts and a second `modelyard up` on
it fails instead of sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from modelyard.fleet.process import _die_with_parent, terminate
from modelyard.fleet.replica import Backoff
from modelyard.routing.endpoints import EndpointTable
from modelyard.routing.feed import adopt_ejection, snapshot
from modelyard.sockets import reuseport_socket

log = logging.getLogger("modelyard.fleet")
WORKER_MODULE = "modelyard.gateway.workers"
FEED_INTERVAL_S = 0.1
FEED_REFRESH_S = 1.0
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0  # beyond the spec's drain (gateway.http.drain_s): streams ended, usage records written
MAX_PENDING_FEED_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024


class WorkerError(Exception):
    pass


def worker_count(setting: int | str) -> int:
    """`gateway.workers`: a number, or "auto": one per CPU that this process may run on."""
    if isinstance(setting, int):
        return setting
    return max(1, len(os.sched_getaffinity(0)))


def reserve_port(host: str, port: int) -> socket.socket:
    """The port kept taken while the workers come and go: bound in their SO_REUSEPORT group, never listening."""
    return reuseport_socket(host, port)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.listening = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.queued: dict[str, int] = {}  # by model: requests waiting in this worker (admission, cold start)
        self.arrivals: dict[str, int] = {}  # by model: requests this process received since it started
        self.p90: dict[str, list[float | None]] = {}  # by model with an SLO: recent TTFT and TPOT p90 seen here
        self.kv: dict[str, float] = {}  # by replica id: the KV cache usage this worker's scraper last read
        self.restarts = 0
        self.exit_code: int | None = None


class GatewayWorkers:
    """`settings` go to every worker as its config (plus its index); `env` is its environment."""

    def __init__(self, table: EndpointTable, count: int, settings: dict[str, Any], env: dict[str, str],
                 log_file: IO[bytes], metrics_dir: Path | None, host: str, port: int,
                 fleet: Callable[[], dict[str, Any]] = dict) -> None:
        self.table, self.settings, self.env, self.log_file = table, settings, env, log_file
        self.fleet = fleet  # the control plane's view (desired replicas by model), sent with the table
        self.metrics_dir, self.host, self.port = metrics_dir, host, port
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reservation: socket.socket | None = None
        self._last_feed = b""
        self._last_feed_at = 0.0
        self._arrivals_before: dict[str, int] = {}  # the workers that exited: their counts stay in the sum

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None and w.process.returncode is None]

    async def start(self) -> None:
        """Starts every worker and returns once all of them listen."""
        self._reservation = reserve_port(self.host, self.port)
        for worker in self.workers:
            self._tasks.append(asyncio.create_task(self._keep(worker), name=f"gateway worker {worker.index}"))
        self._tasks.append(asyncio.create_task(self._feed_loop(), name="gateway feed"))
        listening = asyncio.gather(*(w.listening.wait() for w in self.workers))
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not listening.done():
                failed = [w for w in self.workers if w.exit_code is not None and not w.listening.is_set()]
                if failed or time.monotonic() > deadline:
                    what = (f"exited with code {failed[0].exit_code}" if failed
                            else f"did not listen within {START_TIMEOUT_S:g}s")
                    raise WorkerError(f"gateway worker {(failed or self.workers)[0].index} {what} "
                                      f"(log: {getattr(self.log_file, 'name', 'the log')})")
                await asyncio.wait([listening], timeout=0.1)
        finally:
            if not listening.done():
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening

    async def _keep(self, worker: _Worker) -> None:
        backoff = Backoff(initial_s=0.5, max_s=10.0, reset_after_s=30.0)
        while not self.stopping:
            started = time.monotonic()
            await self._run(worker)
            if self.stopping or not worker.listening.is_set():
                return  # a worker that never listened makes `start` fail; it is not retried
            worker.restarts += 1
            delay = backoff.next_delay(time.monotonic() - started)
            log.warning("gateway worker %d exited with code %s; restart #%d in %.1fs", worker.index,
                        worker.exit_code, worker.restarts, delay)
            await asyncio.sleep(delay)

    async def _run(self, worker: _Worker) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self.log_file, env=self.env, start_new_session=True, preexec_fn=_die_with_parent(),
            limit=MAX_LINE_BYTES)
        worker.process, worker.exit_code = process, None
        assert process.stdin is not None and process.stdout is not None
        config = {**self.settings, "index": worker.index}
        process.stdin.write(orjson.dumps({"config": config, "endpoints": snapshot(self.table), "fleet": self.fleet()})
                            + b"\n")
        log.info("gateway worker %d started (pid %d)", worker.index, process.pid)
        try:
            while line := await process.stdout.readline():
                self._on_message(worker, orjson.loads(line))
        finally:
            worker.exit_code = await process.wait()
            for model, count in worker.arrivals.items():
                self._arrivals_before[model] = self._arrivals_before.get(model, 0) + count
            worker.in_flight, worker.queued, worker.arrivals, worker.p90, worker.kv = {}, {}, {}, {}, {}
            self._sum_in_flight()
            if self.metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _on_message(self, worker: _Worker, message: dict[str, Any]) -> None:
        if "listening" in message:
            worker.listening.set()
        elif "ejected" in message:
            if adopt_ejection(self.table, message["ejected"]):
                self._push(force=True)
        elif "in_flight" in message:
            worker.in_flight = message["in_flight"]
            self._sum_in_flight()
        elif "load" in message:
            load = message["load"]
            worker.queued, worker.arrivals, worker.p90 = load["queued"], load["arrivals"], load.get("p90", {})
            worker.kv = load.get("kv", {})

    def reconfigure(self, spec: dict[str, Any], keys: dict[str, str]) -> None:
        """A revision applied in place: every worker takes it now; one that starts later gets it in its config."""
        self.settings = {**self.settings, "spec": spec, "keys": keys}
        line = orjson.dumps({"revision": {"spec": spec, "keys": keys}}) + b"\n"
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None and process.stdin is not None:
                process.stdin.write(line)

    def queued(self, model: str) -> int:
        """Requests waiting in every worker in front of the model's replicas (admission queue, cold start)."""
        return sum(w.queued.get(model, 0) for w in self.workers)

    def latency(self, model: str) -> tuple[float | None, float | None]:
        """The worst recent TTFT and TPOT p90 among the workers (None: no sample)."""
        seen = [w.p90[model] for w in self.workers if model in w.p90]
        ttft = [v[0] for v in seen if v[0] is not None]
        tpot = [v[1] for v in seen if v[1] is not None]
        return max(ttft, default=None), max(tpot, default=None)

    def kv_usage(self, replica: str) -> float:
        """A replica's KV cache usage, as the workers' scrapers last read it (the highest; 0 if none did)."""
        return max((w.kv.get(replica, 0.0) for w in self.workers), default=0.0)

    def arrivals(self, model: str) -> int:
        """Requests for the model that every worker received since `up` started (grows; its change is activity)."""
        return self._arrivals_before.get(model, 0) + sum(w.arrivals.get(model, 0) for w in self.workers)

    def _sum_in_flight(self) -> None:
        for endpoint in self.table:
            endpoint.in_flight = sum(w.in_flight.get(endpoint.id, 0) for w in self.workers)

    async def _feed_loop(self) -> None:
        while not self.stopping:
            self._push()
            await asyncio.sleep(FEED_INTERVAL_S)

    def _push(self, force: bool = False) -> None:
        """Sends the table to every worker when it changed (and every FEED_REFRESH_S anyway)."""
        data = orjson.dumps({"endpoints": snapshot(self.table), "fleet": self.fleet()}) + b"\n"
        now = time.monotonic()
        if not force and data == self._last_feed and now - self._last_feed_at < FEED_REFRESH_S:
            return
        self._last_feed, self._last_feed_at = data, now
        for worker in self.workers:
            process = worker.process
            if process is None or process.returncode is not None or process.stdin is None:
                continue
            transport = process.stdin.transport
            if transport.is_closing() or transport.get_write_buffer_size() > MAX_PENDING_FEED_BYTES:
                continue  # a worker that does not read gets the next table once it does
            process.stdin.write(data)

    async def stop(self) -> None:
        """SIGTERM to every worker (each finishes its requests and writes its usage records), SIGKILL if late."""
        self.stopping = True
        processes = [w.process for w in self.workers if w.process is not None]
        drain = float(self.settings.get("spec", {}).get("gateway", {}).get("http", {}).get("drain_s", 5.0))
        await asyncio.gather(*(terminate(p, drain + STOP_GRACE_S) for p in processes), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reservation is not None:
            self._reservation.close()
