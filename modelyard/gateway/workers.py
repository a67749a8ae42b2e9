"""One gateway worker process: `python -m modelyard.gateway.workers`, started by `modelyard up`
(modelyard/fleet/gateway_workers.py), never by hand.

Its stdin carries JSON lines from the parent: first `{"config": ..., "endpoints": [...]}` (the spec, the key
ring as sha256 hashes, the admin key, where the store and the shared limiter are), then `{"endpoints": [...]}`
whenever the supervisor's table changes (routing/feed.py). Its stdout carries JSON lines to the parent:
`{"listening": pid}`, `{"ejected": {...}}` (a passive ejection decided here), `{"in_flight": {...}}`; anything
else the process prints goes to stderr, the log. It listens on the gateway's host:port with SO_REUSEPORT, like
its siblings, so the kernel spreads new connections over them. It runs uvloop: it starts no child process.
It serves with the gateway's own HTTP server (gateway/server.py, gateway/protocol.py). SIGTERM (or the parent
closing stdin) stops it: no new connections, in-flight requests get `gateway.http.drain_s` to finish, then each
open stream ends with an SSE error event and is recorded with the error `shutdown`, then the buffered usage records
are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from modelyard.gateway.app import Gateway
from modelyard.gateway.asgi import create_gateway
from modelyard.gateway.auth import KeyRing
from modelyard.gateway.failover import OutlierDetector
from modelyard.gateway.limits import Limiter, LocalLimiter, RedisLimiter
from modelyard.gateway.protocol import Limits
from modelyard.gateway.request import MAX_BODY_BYTES
from modelyard.gateway.server import Server
from modelyard.observability.metrics import GatewayMetrics
from modelyard.routing.endpoints import Endpoint, EndpointTable
from modelyard.routing.feed import Held, apply, ejection
from modelyard.sockets import reuseport_socket
from modelyard.spec.schema import YardSpec
from modelyard.store.factory import open_store

WORKER_HEADER = "x-modelyard-worker"
MAX_LINE_BYTES = 64 * 1024 * 1024
REFRESH_S = 0.25
PUBLISH_EVERY = 4  # routing timings published once a second
BACKLOG = 2048
REDIS_CONNECTIONS = 128
REDIS_POOL_WAIT_S = 10.0
# the garbage collector, once the worker serves: what startup made is frozen out of its scans, and it runs less
# often (a young-generation pass every 20,000 allocations, not 700): its passes stalled the loop for 4-8 ms
GC_THRESHOLDS = (20_000, 50, 50)
log = logging.getLogger("modelyard.gateway.worker")
Send = Callable[[dict[str, Any]], None]


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket of its own on host:port, in the SO_REUSEPORT group that the workers share."""
    sock = reuseport_socket(host, port)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class ReportingOutliers(OutlierDetector):
    """Ejects as the gateway always does, and tells the parent, which shares it with every worker."""

    def __init__(self, send: Send, held: Held, on_eject: Callable[[Endpoint], None] | None = None) -> None:
        super().__init__(on_eject=on_eject)
        self.send, self.held = send, held

    def ejected(self, endpoint: Endpoint) -> None:
        super().ejected(endpoint)
        self.held[(endpoint.model, endpoint.replica)] = endpoint.ejected_until
        self.send({"ejected": ejection(endpoint)})


def server_for(app: Any, spec: YardSpec) -> Server:
    """The worker's HTTP server with the spec's bounds (`gateway.http`); every answer names the worker's pid."""
    http = spec.gateway.http
    limits = Limits(max_head_bytes=http.max_head_bytes, max_headers=http.max_headers, max_body_bytes=MAX_BODY_BYTES,
                    head_timeout_s=http.head_timeout_s, body_timeout_s=http.body_timeout_s,
                    idle_timeout_s=http.idle_timeout_s, max_connections=http.max_connections)
    return Server(app, limits, [(WORKER_HEADER.encode(), str(os.getpid()).encode())], drain_s=http.drain_s)


class Worker:
    def __init__(self, config: dict[str, Any], send: Send) -> None:
        self.config, self.send = config, send
        self.spec = YardSpec.model_validate(config["spec"])
        self.table = EndpointTable()
        self.held: Held = {}
        self.gateway: Gateway | None = None

    async def _limiter(self) -> tuple[Limiter, Any]:
        url = self.config.get("redis")
        if not url:
            return LocalLimiter(), None
        import redis.asyncio

        # a bounded pool that waits for a free connection: redis-py's default one fails past 100 at once
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS,
                                                             timeout=REDIS_POOL_WAIT_S)
        client = redis.asyncio.Redis.from_pool(pool)  # closing the client closes the pool
        return RedisLimiter(client), client

    async def run(self, feed: asyncio.StreamReader, endpoints: list[dict[str, Any]],
                  fleet: dict[str, Any] | None = None) -> int:
        apply(self.table, endpoints, self.held, time.monotonic())
        store = await open_store(self.spec.store.url, self.config["state_dir"])
        limiter, redis_client = await self._limiter()
        metrics_dir = self.config.get("metrics_dir")
        metrics = GatewayMetrics(Path(metrics_dir) if metrics_dir else None)
        app = create_gateway(self.spec, self.table, KeyRing(self.config["keys"]), store, limiter, metrics,
                             admin_key=self.config.get("admin_key"), workers=int(self.config["workers"]),
                             ui_key=self.config.get("ui_key"), metrics_key=self.config.get("metrics_key"))
        gateway: Gateway = app.state.gateway
        gateway.outliers = ReportingOutliers(self.send, self.held, gateway.outliers.on_eject)
        gateway.fleet = fleet or {}
        self.gateway = gateway
        sock = listen_socket(self.spec.gateway.host, self.spec.gateway.port)
        server = server_for(app, self.spec)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(self._follow(feed, stop)), asyncio.create_task(self._refresh(gateway, server))]
        try:
            if await server.start(sock):
                await stop.wait()
            await server.shutdown()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sock.close()
            await store.close()
            if redis_client is not None:
                await redis_client.aclose()
        return 0 if server.started else 1

    async def _follow(self, feed: asyncio.StreamReader, stop: asyncio.Event) -> None:
        """Applies the parent's endpoint tables; the parent gone (stdin closed): stop."""
        while line := await feed.readline():
            try:
                message = orjson.loads(line)
                if "endpoints" in message:
                    apply(self.table, message["endpoints"], self.held, time.monotonic())
                if "fleet" in message and self.gateway is not None:
                    self.gateway.fleet = message["fleet"]
                if "revision" in message and self.gateway is not None:  # `modelyard apply`, in place
                    self.spec = YardSpec.model_validate(message["revision"]["spec"])
                    self.gateway.reconfigure(self.spec, KeyRing(message["revision"]["keys"]))
            except (ValueError, KeyError, TypeError) as exc:  # keep serving with the last good table
                log.error("bad endpoint table from the parent: %s: %s", type(exc).__name__, exc)
        stop.set()

    async def _refresh(self, gateway: Gateway, server: Server) -> None:
        """Says when it listens, then keeps its share of the gauges and of the in-flight counts current."""
        while not server.started:
            await asyncio.sleep(0.02)
        tune_gc()
        self.send({"listening": os.getpid()})
        last: dict[str, Any] = {}
        rounds = 0
        while True:
            rounds += 1
            if rounds % PUBLISH_EVERY == 0:
                with contextlib.suppress(OSError):
                    gateway.metrics.routing.publish()  # the other workers' /metrics add these routing timings
                    gateway.recent.publish({e.id: e.in_flight for e in self.table})  # and /ui/state these
            depth = {m.name: gateway.queues[m.name].waiting for m in self.spec.models}
            for name, waiting in depth.items():
                if last.get("depth", {}).get(name) != waiting:
                    gateway.metrics.queue_depth.labels(name).set(waiting)
            buffered = gateway.writer.buffered if gateway.writer is not None else 0
            if last.get("buffered") != buffered:
                gateway.metrics.usage_buffered.set(buffered)
            in_flight = {e.id: e.in_flight for e in self.table}
            if last.get("in_flight") != in_flight:
                self.send({"in_flight": in_flight})
            # the control plane's signals: requests waiting in front of each model, and arrivals so far
            now = time.perf_counter()
            load = {"queued": {name: waiting + gateway.holding[name] for name, waiting in depth.items()},
                    "arrivals": dict(gateway.arrivals),
                    "p90": {name: recent.p90(now) for name, recent in gateway.latency.items()},
                    "kv": {e.id: e.kv_usage for e in self.table if e.scraped_at}}  # what this worker's scraper read
            if last.get("load") != load:
                self.send({"load": load})
            last = {"depth": depth, "buffered": buffered, "in_flight": in_flight, "load": load}
            await asyncio.sleep(REFRESH_S)


def tune_gc() -> None:
    """GC_THRESHOLDS, unless MODELYARD_GC=default (to measure the difference)."""
    if os.environ.get("MODELYARD_GC", "") == "default":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _logging(index: int) -> None:
    root = logging.getLogger("modelyard")
    root.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s %(name)s [gateway worker {index}, pid {os.getpid()}]: %(message)s"))
    root.addHandler(handler)


async def _main(out_fd: int) -> int:
    loop = asyncio.get_running_loop()
    feed = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(feed), sys.stdin)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out_fd, "wb", buffering=0))

    def send(message: dict[str, Any]) -> None:
        if not transport.is_closing():
            transport.write(orjson.dumps(message) + b"\n")

    first = await feed.readline()
    if not first:
        return 1
    message = orjson.loads(first)
    _logging(int(message["config"]["index"]))
    try:
        return await Worker(message["config"], send).run(feed, message["endpoints"], message.get("fleet"))
    finally:
        transport.close()


def main() -> None:
    out_fd = os.dup(1)  # the channel to the parent; whatever else writes to stdout lands in the log
    os.dup2(2, 1)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(_main(out_fd)))


if __name__ == "__main__":
    main()
