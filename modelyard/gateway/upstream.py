"""The gateway's HTTP/1.1 client to the engines: a keep-alive pool of connections per engine, each a protocol
whose answer httptools parses, and a streamed body handed to a callback as each piece arrives.

Why not aiohttp here (it still serves the scraper and the probes): relaying a stream through aiohttp costs, per
chunk, a feed into its StreamReader, a future woken, the relay's task resumed to `readany` and an ASGI `send`
awaited. Here a chunk goes from the engine's socket to the client's in one callback (gateway/relay.py), with no
task switch: what a relay of a thousand streams spends most of its time on (docs/architecture.md, "Hot path").

A request is written in one piece: a head made once per engine and path, then the body. What can go wrong has a
class of its own, so the gateway knows what to retry and where:
- `ConnectFailed`: no connection could be made, the replica is down (retried on another one);
- `StaleConnection`: a pooled connection that the engine had closed before it answered (one more try on the same
  replica, as with any HTTP client's keep-alive pool);
- `UpstreamError`: the engine closed the connection or sent what is not HTTP, after it started answering;
- `TimeoutError`: from the timeouts the caller sets around the awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from modelyard import __version__

KEEPALIVE_S = 4.0  # idle connections are dropped before the engines drop them (llama-server: after 5 s)
USER_AGENT = f"modelyard/{__version__}".encode()


class UpstreamError(ConnectionError):
    """The engine's connection failed, or its answer could not be read."""


class ConnectFailed(UpstreamError):
    """No connection could be made to the engine."""


class StaleConnection(UpstreamError):
    """A pooled connection that the engine had closed before it answered."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where an engine listens, parsed once from its base URL (which may carry a path prefix)."""

    host: str
    port: int
    tls: bool
    prefix: bytes
    authority: bytes

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(parts.hostname, port, tls, parts.path.rstrip("/").encode(), parts.netloc.encode())


def request_head(target: Target, path: str, headers: dict[str, str]) -> bytes:
    """A POST's request line and headers up to Content-Length's value, made once per engine, path and headers."""
    lines = [b"POST %s%s HTTP/1.1" % (target.prefix, path.encode()), b"Host: " + target.authority,
             b"User-Agent: " + USER_AGENT, b"Accept: */*"]
    own = {name.lower() for name in headers}
    if "content-type" not in own:
        lines.append(b"Content-Type: application/json")
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        if any(c in name + value for c in "\r\n"):
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\nContent-Length: "


class Connection(asyncio.Protocol):
    """One connection to an engine, answering one request at a time.

    Its answer is read either by awaiting (`head`, `chunk`, `read`) or, once `attach`ed, pushed to a sink as each
    piece arrives; `ended` is then called once with None (the answer is complete) or the error. `on_first`, when
    set, is called with the connection as soon as a 200 answer's first body bytes are read, in that read's
    callback (a stream's relay attaches itself there, so its first chunk goes out without waiting for a task).
    """

    def __init__(self, pool: UpstreamPool, target: Target) -> None:
        self.pool, self.target = pool, target
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.ended: Callable[[BaseException | None], None] | None = None
        self.idle = False
        self.idle_since = 0.0
        self.reused = False
        self.paused = False  # reading paused (the relay's client could not keep up)
        self.on_first: Callable[[Connection], None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.buffer: list[bytes] = []
        self.pending: list[bytes] = []  # the pieces one read brought, for the sink
        self.got_head = self.complete = self.received = self.until_eof = self.keep_alive = False
        self.streamed = False  # attached: the body goes to the sink
        self.on_first = None
        self.error: BaseException | None = None

    # --- the caller's side ---
    def send(self, head: bytes, body: bytes, extra: bytes = b"") -> None:
        """Writes one request (`head` from `request_head`, without its Content-Length value; `extra`: this request's
        own header lines, each ending in CRLF)."""
        assert self.transport is not None
        self.transport.write(b"%b%d\r\n%b\r\n%b" % (head, len(body), extra, body))

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def head(self) -> int:
        """The answer's status, once its headers are in."""
        while not self.got_head:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.status

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def chunk(self) -> bytes:
        """What arrived of the body since the last call, waiting for some; b"" at its end, or once the body goes to
        a sink (`attach`, or `on_first`'s callback attached one)."""
        while not self.buffer:
            if self.complete or self.streamed:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()
        data = self.buffer[0] if len(self.buffer) == 1 else b"".join(self.buffer)
        self.buffer.clear()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            if self.error is not None:
                raise self.error
            await self._wait()
        data = b"".join(self.buffer)
        self.buffer.clear()
        return data

    def attach(self, sink: Callable[[bytes], None], ended: Callable[[BaseException | None], None]) -> None:
        """From now on the body goes to `sink` as it arrives (what already arrived first), then `ended` is called."""
        pending = b"".join(self.buffer)
        self.buffer.clear()
        self.sink, self.ended, self.streamed, self.on_first = sink, ended, True, None
        if pending:
            sink(pending)
        if self.complete:
            self._end(None)
        elif self.error is not None:
            self._end(self.error)

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        """Done with it: back to the pool if the answer was read whole and the engine keeps the connection open."""
        self.sink = self.ended = None
        if (self.complete and self.error is None and self.transport is not None
                and not self.transport.is_closing() and self.keep_alive):
            self.resume()  # paused when its last piece came (a slow client): a pooled connection must read
            self.pool._put(self)
        else:
            self.close()

    def expire(self) -> None:
        """The caller's time for an answer ran out: what awaits it raises TimeoutError, and the connection closes."""
        self._fail(TimeoutError("the engine did not answer in time"))
        self.close()

    def close(self) -> None:
        """Drops the connection (an engine stops working on a request whose connection closed)."""
        self.sink = self.ended = None
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()

    # --- the event loop's side ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the engine's answer is not valid HTTP ({exc})"))
            self.close()
        if self.pending:
            self._deliver()
        if self.on_first is not None and self.buffer and self.status == 200 and self.sink is None:
            on_first, self.on_first = self.on_first, None
            on_first(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle:
            self.pool._forget(self)
            return
        if self.complete or self.error is not None:
            return
        if self.got_head and self.until_eof:  # a body delimited by the end of the connection
            self.on_message_complete()
        elif self.reused and not self.received:
            self._fail(StaleConnection("the engine had closed the pooled connection"))
        else:
            reason = f": {exc}" if exc else ""
            self._fail(UpstreamError(f"the engine closed the connection{reason}"))

    # --- httptools' callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        self.until_eof = not framed and self.status not in (204, 304)
        self.keep_alive = self.parser.should_keep_alive()  # asked now: httptools forgets it after the message
        self.got_head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.pending.append(body)  # handed over once per read (`data_received`), in one piece
        else:
            self.buffer.append(body)
            self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if self.ended is not None:
            self._end(None)
        else:
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = exc
            if self.ended is not None:
                self._end(exc)
            else:
                self._wake()

    def _deliver(self) -> None:
        pending, sink = self.pending, self.sink
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if sink is not None:
            sink(data)

    def _end(self, exc: BaseException | None) -> None:
        if self.pending:
            self._deliver()
        ended, self.sink, self.ended = self.ended, None, None
        if ended is not None:
            ended(exc)


class UpstreamPool:
    """Connections to the engines, kept alive between requests (LIFO, so that few stay warm)."""

    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        self.keepalive_s = keepalive_s
        self._idle: dict[Target, list[Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._tls: ssl.SSLContext | None = None
        self.opened = 0

    def target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = Target.parse(url)
        return target

    async def connect(self, target: Target, timeout_s: float) -> Connection:
        """A pooled connection to `target`, or a new one within `timeout_s`."""
        idle = self._idle.get(target)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()
                conn.idle = False
                assert conn.transport is not None
                if not conn.transport.is_closing() and now - conn.idle_since < self.keepalive_s:
                    conn.reused = True
                    conn._reset()
                    return conn
                conn.transport.close()
        loop = asyncio.get_running_loop()
        tls = None
        if target.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(lambda: Connection(self, target), target.host, target.port,
                                                       ssl=tls, server_hostname=target.host if tls else None)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {target.host}:{target.port} ({exc.strerror or exc})") from exc
        self.opened += 1
        return conn

    def _put(self, conn: Connection) -> None:
        conn.idle, conn.idle_since = True, asyncio.get_running_loop().time()
        self._idle.setdefault(conn.target, []).append(conn)

    def _forget(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.get(conn.target, []).remove(conn)

    def idle(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def close(self) -> None:
        """Closes the idle connections (those in use are their requests' to close)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.idle = False
                conn.close()
        self._idle.clear()
