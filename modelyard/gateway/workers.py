"""One gateway worker process: `python -m modelyard.gateway.workers`, started by `modelyard up`
(modelyard/fleet/gateway_workers.py), never by hand.

Its stdin carries JSON lines from the parent: first `{"config": ..., "endpoints": [...]}` (the spec, the key
ring as sha256 hashes, the admin key, where the store and the shared limiter are), then `{"endpoints": [...]}`
whenever the supervisor's table changes (routing/feed.py). Its stdout carries JSON lines to the parent:
`{"listening": pid}`, `{"ejected": {...}}` (a passive ejection decided here), `{"in_flight": {...}}`; anything
else the process prints goes to stderr, the log. It listens on the gateway's host:port with SO_REUSEPORT, like
its siblings, so the kernel spreads new connections over them. It runs uvloop: it starts no child process.
SIGTERM (or the parent closing stdin) stops it the way uvicorn stops: in-flight requests finish (5 s at
most), then the buffered usage records are written.
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
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from modelyard.gateway.accept import BatchAcceptor
from modelyard.gateway.app import Gateway, create_gateway
from modelyard.gateway.auth import KeyRing
from modelyard.gateway.failover import OutlierDetector
from modelyard.gateway.limits import Limiter, LocalLimiter, RedisLimiter
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


class _Server(uvicorn.Server):
    """uvicorn's server with the worker's own signals (below: it exits 0 after a graceful stop) and its own accept
    loop on `listen` (gateway/accept.py: uvloop alone accepts one connection per loop iteration)."""

    def __init__(self, config: uvicorn.Config, listen: socket.socket) -> None:
        super().__init__(config)
        self.listen = listen
        self.acceptor: BatchAcceptor | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan and the connection state; no listener of uvicorn's
        if self.should_exit:
            return
        config, loop = self.config, asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop)

        self.acceptor = BatchAcceptor(self.listen, protocol, loop)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.acceptor is not None:
            self.acceptor.close()  # no new connections; those open finish as uvicorn stops them
        await super().shutdown(sockets)


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
        server = _Server(uvicorn.Config(app, access_log=False, log_level="warning", lifespan="on",
                                        timeout_graceful_shutdown=5, http="httptools",
                                        proxy_headers=False,  # the gateway never reads the client's address
                                        headers=[(WORKER_HEADER, str(os.getpid()))]), sock)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        tasks = [asyncio.create_task(self._follow(feed, server)), asyncio.create_task(self._refresh(gateway, server))]
        try:
            await server.serve()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sock.close()
            await store.close()
            if redis_client is not None:
                await redis_client.aclose()
        return 0 if server.started else 1

    async def _follow(self, feed: asyncio.StreamReader, server: uvicorn.Server) -> None:
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
        server.should_exit = True

    async def _refresh(self, gateway: Gateway, server: uvicorn.Server) -> None:
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
