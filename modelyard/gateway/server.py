"""The gateway worker's HTTP server: the ASGI app's lifespan, the accept loop (`gateway/accept.py`), one
`protocol.HttpProtocol` per connection, a sweep once a second (deadlines, the Date header), and a shutdown that
tells the truth.

Shutdown (`Server.shutdown`, on SIGTERM): no new connections; idle keep-alive connections closed, busy ones closed
once their response is complete; requests in flight get `drain_s` to finish; then each response still open is
ended by its shutdown callback (the relay: an SSE error event, and the request recorded through its `finish` with
the error `shutdown`), a request not yet answered is cancelled and answered 503 `shutdown`; then the app's
lifespan ends (the gateway writes its buffered usage records).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from modelyard.gateway.accept import BatchAcceptor
from modelyard.gateway.protocol import (
    CLIENT_EXTENSION,
    Exchange,
    HttpProtocol,
    Limits,
    Rejected,
    Throttled,
    error_response,
)

log = logging.getLogger("modelyard.gateway.http")
SWEEP_S = 1.0
SHUTDOWN_GRACE_S = 2.0  # after the drain: how long the shutdown callbacks have to end their responses
POLL_S = 0.05
App = Any  # an ASGI application


class ServerState:
    """What the connections of one server share: the app, the bounds, who is open and who waits for a request."""

    def __init__(self, app: App, limits: Limits, headers: Sequence[tuple[bytes, bytes]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.app, self.limits, self.loop = app, limits, loop
        self.headers = list(headers)
        self.app_state: dict[str, Any] = {}
        self.connections: dict[HttpProtocol, None] = {}
        self.idle: dict[HttpProtocol, None] = {}  # waiting for a request's head, oldest first
        self.stopping = False
        self.eager = sys.version_info >= (3, 12) and os.environ.get("MODELYARD_EAGER", "") != "0"
        self.throttled = Throttled(log)
        self.default_head = b""
        self.stamp()

    def stamp(self) -> None:
        """The head's lines that every response has (the Date, the server's own headers), made once a second."""
        lines = [(b"date", email.utils.formatdate(usegmt=True).encode()), *self.headers]
        self.default_head = b"".join(b"%b: %b\r\n" % (name, value) for name, value in lines)

    def opened(self, proto: HttpProtocol) -> None:
        self.connections[proto] = None
        self.idle[proto] = None
        if len(self.connections) > self.limits.max_connections:
            oldest = next(iter(self.idle))  # a connection that sends nothing loses its place to a new one
            if oldest is proto:
                self.noted("too_many_connections", "connections refused: the worker serves its maximum")
                proto.reject(Rejected(503, "the gateway has too many open connections; try again"))
            else:
                self.noted("evicted", "connections closed while waiting for a request, to make room for new ones")
                oldest.close()

    def closed(self, proto: HttpProtocol) -> None:
        self.connections.pop(proto, None)
        self.idle.pop(proto, None)

    def busy(self, proto: HttpProtocol) -> None:
        self.idle.pop(proto, None)

    def waiting(self, proto: HttpProtocol) -> None:
        self.idle[proto] = None

    def noted(self, kind: str, message: str) -> None:
        self.throttled.note(kind, message)

    async def run(self, exchange: Exchange) -> None:
        """One request through the app; whatever way it ends, the connection is left in a state that is HTTP."""
        try:
            await self._run(exchange)
        finally:  # the scope and its exchange refer to each other: freed now, not by the cyclic collector
            exchange.scope["extensions"].pop(CLIENT_EXTENSION, None)

    async def _run(self, exchange: Exchange) -> None:
        proto, scope = exchange.proto, exchange.scope
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:  # the shutdown's last resort
            if not exchange.started and not exchange.disconnected:
                proto.transport.write(error_response(503, "the gateway is shutting down", "shutdown"))
            proto.close()
            return
        except Exception:
            if exchange.disconnected:  # the client left (or was dropped) while the app still read or wrote
                self.noted("app_after_disconnect", "requests whose client left before the app was done")
            else:
                log.exception("%s %s failed", scope["method"], scope["path"])
            if not exchange.started and not exchange.disconnected:
                proto.transport.write(error_response(500, "internal error", "internal_error"))
            proto.close()
            return
        if not exchange.complete:
            if not exchange.started and not exchange.disconnected:
                log.error("%s %s: the app returned without an answer", scope["method"], scope["path"])
                proto.transport.write(error_response(500, "internal error", "internal_error"))
            proto.close()


class Lifespan:
    """The ASGI lifespan protocol, driven from the server: startup before listening, shutdown at the end."""

    def __init__(self, app: App, state: dict[str, Any]) -> None:
        self.app, self.state = app, state
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.started, self.stopped = asyncio.Event(), asyncio.Event()
        self.failed = False
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> bool:
        self.task = asyncio.create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        await self.started.wait()
        return not self.failed

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.stopped.wait()
        await self.task

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except Exception:
            log.exception("the app's lifespan failed")
            self.failed = True
        finally:
            self.started.set()
            self.stopped.set()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            log.error("%s: %s", kind, message.get("message", ""))
            self.failed = True
        if kind.startswith("lifespan.startup"):
            self.started.set()
        elif kind.startswith("lifespan.shutdown"):
            self.stopped.set()


class Server:
    """Serves `app` on a listening socket until `shutdown`; `headers` go on every response."""

    def __init__(self, app: App, limits: Limits | None = None, headers: Sequence[tuple[bytes, bytes]] = (),
                 drain_s: float = 5.0) -> None:
        self.app, self.limits, self.headers, self.drain_s = app, limits or Limits(), headers, drain_s
        self.state: ServerState | None = None
        self.lifespan: Lifespan | None = None
        self.acceptor: BatchAcceptor | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.started = False

    async def start(self, sock: socket.socket) -> bool:
        """The lifespan's startup, then connections taken in; False if the startup failed."""
        loop = asyncio.get_running_loop()
        state = self.state = ServerState(self.app, self.limits, self.headers, loop)
        self.lifespan = Lifespan(self.app, state.app_state)
        if not await self.lifespan.startup():
            return False
        self.acceptor = BatchAcceptor(sock, lambda: HttpProtocol(state), loop)
        self.sweeper = loop.create_task(self._sweep(state))
        self.started = True
        # What the startup made (modules, the app, its tables) lives as long as the process: kept out of the cyclic
        # collector's full passes, which would otherwise walk it all (tens of ms under load) every few seconds
        gc.collect()
        gc.freeze()
        return True

    async def _sweep(self, state: ServerState) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            state.stamp()
            now = state.loop.time()
            for proto in [p for p in state.connections if p.deadline and now >= p.deadline]:
                proto.expired()

    def in_flight(self) -> list[Exchange]:
        state = self.state
        if state is None:
            return []
        return [p.current for p in state.connections if p.current is not None and not p.current.complete]

    async def _end(self, left: list[Exchange]) -> None:
        """The drain time is over: streams ended by their shutdown callbacks, the other requests cancelled."""
        tasks = [e.task for e in left if e.task is not None]
        streams = 0
        for exchange in left:
            if exchange.shut_down():
                streams += 1
            elif exchange.task is not None:
                exchange.task.cancel()
        log.warning("drain time (%.0f s) over: %d request(s) still open ended by the shutdown, %d of them streams",
                    self.drain_s, len(left), streams)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=SHUTDOWN_GRACE_S)

    async def shutdown(self) -> None:
        """Stops as the module's docstring says; returns once the app's lifespan has ended."""
        state = self.state
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor.sock.close()  # the port's other listeners (SO_REUSEPORT) get the new connections now
        if state is not None:
            state.stopping = True
            for proto in list(state.connections):
                if proto.current is None:
                    proto.close()
            loop = state.loop
            deadline = loop.time() + self.drain_s
            while self.in_flight() and loop.time() < deadline:
                await asyncio.sleep(POLL_S)
            left = self.in_flight()
            if left:
                await self._end(left)
            for proto in list(state.connections):
                proto.close()
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        if self.lifespan is not None:
            await self.lifespan.shutdown()
