"""The gateway's HTTP/1.1 server side: one asyncio protocol per client connection, its requests parsed by httptools
and run by the ASGI app (Starlette, `gateway/app.py`), as `gateway/upstream.py` owns the client side.

Why our own: the relay writes each stream's chunks straight to the client's socket, from the engine connection's
callback (one write per read of the engine's socket; the first with the response's head), and watches the client's
hang-up without a task per stream. uvicorn gives neither through a public API (the relay used to reach into
uvicorn's private request cycle and into a private attribute of asyncio's events), and it has no bound on a
request head's size, on headers, on slow clients or on open connections.

Each request is an `Exchange`: the ASGI `receive`/`send` for every route, and, in
`scope["extensions"]["modelyard.client"]`, the same object as the hot path's public API:

- `disconnected` (bool) and `on_disconnect(callback)`, which returns a function that unsubscribes it (as does
  `remove_on_disconnect(callback)`): the callback (no argument) is called once if the client goes away before
  this request's response is complete; from the moment the request's head is read (a callback added after the
  client left is called on the next loop turn). After the response is complete, callbacks are dropped: the
  connection may serve another request.
- `on_shutdown(callback)`: called once when the server's drain time is over and this response is still open;
  the callback must end the response soon (the relay writes an SSE error event and calls `end`), else the
  request's task is cancelled and the connection closed. One callback per request, the last one set: a request's
  scope may set one at admission (say, to end a queued request with its own error) and the relay replaces it when
  its stream starts. Without one, the request's task is cancelled at once and, if nothing was answered yet, the
  server answers 503 `shutdown`.
- `start(status, headers)`: starts a streamed response (chunked on HTTP/1.1; on HTTP/1.0 the body runs to the
  connection's close); its head is held and written with the first `write` or `end`.
- `write(data)`: one piece of the body, with the held head, as one socket write.
- `end(data=b"")`: the last piece, the end of the body, in one write; the response is complete (the connection
  then serves the next request, pipelined or not, or closes).
- `write_paused` (bool) and `drain()` (an awaitable done when the client's socket takes more): flow control.

Bounds (`Limits`), all before the app sees the request, so before authentication: the head's size (431) and its
number of headers (431), the time to send a head (from the connection's start, or from a request's first byte)
and a body (408, or just closed when nothing was sent), keep-alive idle connections closed, the body's size
(413 as soon as a Content-Length or the bytes received pass it), and the connections open per worker (the
oldest one waiting for a request head is closed to make room; if none waits, a 503 and close).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from modelyard.gateway.errors import error_body

if TYPE_CHECKING:
    from modelyard.gateway.server import ServerState

log = logging.getLogger("modelyard.gateway.http")
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
LINGER_S = 2.0  # after a refusal: how long what the client still sends is read and dropped
HIGH_WATER = 256 * 1024  # a request body buffered beyond this pauses reading until the app takes it
CLIENT_EXTENSION = "modelyard.client"
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"expect"})  # the request headers the server reads
Callback = Callable[[], None]


@dataclass(frozen=True)
class Limits:
    """What one client may hold of a worker before (and while) a request is served; see the module's docstring."""

    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 8 * 1024 * 1024
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 5.0
    max_connections: int = 8192


class Rejected(Exception):
    """A request refused by the server itself, before the app (a bound passed, or not HTTP)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str, code: str, keep_alive: bool = False) -> bytes:
    body = error_body(status, message, code)
    return b"%bcontent-type: application/json\r\ncontent-length: %d\r\n%b\r\n%b" % (
        STATUS_LINES[status], len(body), b"" if keep_alive else b"connection: close\r\n", body)


class Exchange:
    """One request and its response (see the module's docstring for the public API)."""

    __slots__ = ("proto", "scope", "keep_alive", "head_only", "expect_100", "body", "body_size", "more_body",
                 "waiter", "started", "complete", "disconnected", "head", "chunked", "length", "callbacks",
                 "shutdown_callback", "task")

    def __init__(self, proto: HttpProtocol, scope: dict[str, Any], keep_alive: bool, expect_100: bool) -> None:
        self.proto, self.scope, self.keep_alive, self.expect_100 = proto, scope, keep_alive, expect_100
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.body_size = 0
        self.more_body = True
        self.waiter: asyncio.Future[None] | None = None
        self.started = self.complete = self.disconnected = False
        self.head = b""  # a started response's head, until it is written with the first piece of its body
        self.chunked = False
        self.length: int | None = None  # the response's Content-Length, when the app gave one
        self.callbacks: list[Callback] | None = None
        self.shutdown_callback: Callback | None = None
        self.task: asyncio.Task[None] | None = None

    # --- the hot path's API ---
    @property
    def write_paused(self) -> bool:
        return self.proto.write_paused

    def drain(self) -> asyncio.Future[None]:
        return self.proto.drain()

    def on_disconnect(self, callback: Callback) -> Callback:
        """Calls `callback` once if the client leaves before the response is complete; returns what unsubscribes."""
        if self.disconnected:
            self.proto.loop.call_soon(callback)
        elif not self.complete:
            if self.callbacks is None:
                self.callbacks = [callback]
            else:
                self.callbacks.append(callback)
        return functools.partial(self.remove_on_disconnect, callback)

    def remove_on_disconnect(self, callback: Callback) -> None:
        if self.callbacks is not None and callback in self.callbacks:
            self.callbacks.remove(callback)

    def on_shutdown(self, callback: Callback | None) -> None:
        self.shutdown_callback = callback

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]], length: int | None = None) -> None:
        """Starts the response; `length`: its body's size, when known (else chunked, or until close on 1.0)."""
        if self.started:
            raise RuntimeError("the response was already started")
        self.started, self.expect_100 = True, False  # no 100 Continue once the answer is on its way
        parts = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, self.proto.state.default_head]
        for name, value in headers:
            if name == b"connection" or name == b"Connection":
                if b"close" in value.lower():  # the app's own `connection: close` ends the connection too
                    self.keep_alive = False
                continue  # the server says what the connection does, once, below
            parts += (name, b": ", value, b"\r\n")
        if length is not None:
            self.length = length
        elif self.head_only or status in (204, 304) or status < 200:
            pass
        elif self.scope["http_version"] == "1.1":
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.keep_alive = False  # an HTTP/1.0 body without a length runs until the connection closes
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)

    def write(self, data: bytes) -> None:
        if self.complete or self.disconnected:
            return
        if self.head_only:
            data = b""
        elif self.chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.head:
            data, self.head = self.head + data, b""
        if data:
            self.proto.transport.write(data)

    def end(self, data: bytes = b"") -> None:
        if self.complete:
            return
        if not self.disconnected:
            if self.head_only:
                data = b""
            elif self.chunked:
                data = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
            if self.head:
                data, self.head = self.head + data, b""
            if data:
                self.proto.transport.write(data)
        self.complete = True
        self.callbacks = None
        self.shutdown_callback = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        self.proto.response_complete(self)

    # --- ASGI ---
    async def receive(self) -> dict[str, Any]:
        if self.expect_100 and not self.started and not self.disconnected:
            self.expect_100 = False
            self.proto.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.body and self.more_body and not self.disconnected and not self.complete:
            self.waiter = self.proto.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.proto.body_taken()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = message.get("headers", ())
            length = None
            for name, value in headers:
                if name.lower() == b"content-length":
                    length = int(value)
            self.start(message["status"], headers, length)  # the head goes out with the first body
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.complete:
                return
            body = message.get("body", b"")
            if message.get("more_body", False):
                self.write(body)
                if self.proto.write_paused and not self.disconnected:
                    await self.proto.drain()
            else:
                self.end(body)
        elif self.disconnected:
            return
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    # --- the protocol's side ---
    def feed(self, data: bytes) -> None:
        self.body.append(data)
        self.body_size += len(data)
        self._wake()

    def finish_body(self) -> None:
        self.more_body = False
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def lost(self) -> None:
        """The client is gone (or the server gave up on it): tell whoever watches, once."""
        if self.disconnected:
            return
        self.disconnected = True
        self._wake()
        callbacks, self.callbacks = self.callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.exception("a disconnect callback failed")

    def shut_down(self) -> bool:
        """The drain time is over: True if a callback will end the response."""
        callback, self.shutdown_callback = self.shutdown_callback, None
        if callback is None:
            return False
        try:
            callback()
        except Exception:
            log.exception("a shutdown callback failed")
            return False
        return True


class HttpProtocol(asyncio.Protocol):
    """One client connection: requests parsed in order, one served at a time (pipelined ones wait their turn)."""

    __slots__ = ("state", "limits", "loop", "parser", "transport", "current", "queue", "parsing", "url", "headers",
                 "length", "chunked", "expect_100", "head_bytes", "in_head", "deadline", "closing", "lingering",
                 "write_paused", "read_paused", "start_pending", "drained", "client", "server")

    def __init__(self, state: ServerState) -> None:
        self.state, self.limits, self.loop = state, state.limits, state.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.current: Exchange | None = None  # the request being served
        self.queue: list[Exchange] = []  # pipelined requests, waiting for the current one's response
        self.parsing: Exchange | None = None  # the request whose body is coming in
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: bytes | None = None  # the request's Content-Length
        self.chunked = self.expect_100 = False  # Transfer-Encoding given, Expect: 100-continue
        self.head_bytes = 0
        self.in_head = False
        self.deadline = 0.0  # loop time after which the server's sweep closes it; 0: none (a request is served)
        self.closing = self.lingering = self.write_paused = self.read_paused = self.start_pending = False
        self.drained: asyncio.Future[None] | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None

    # --- asyncio ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer, own = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(own[0]), int(own[1])) if isinstance(own, tuple) else None
        self.deadline = self.loop.time() + self.limits.head_timeout_s
        self.state.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state.closed(self)
        for exchange in (self.current, *self.queue):
            if exchange is not None and not exchange.complete:
                if exchange.started or exchange.more_body:
                    self.state.noted("client_disconnected", "a client disconnected before its response was complete")
                exchange.lost()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def drain(self) -> asyncio.Future[None]:
        if self.drained is None:
            self.drained = self.loop.create_future()
            if not self.write_paused or self.closing:
                self.drained.set_result(None)
        return self.drained

    def data_received(self, data: bytes) -> None:
        if self.closing or self.lingering:
            return
        try:
            self.parser.feed_data(data)
            if self.start_pending and self.current is not None:
                self.start_pending = False
                self._run(self.current)
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > self.limits.max_head_bytes:
                    raise Rejected(431, f"the request head is larger than {self.limits.max_head_bytes} bytes")
        except httptools.HttpParserCallbackError as exc:  # what a callback raised, wrapped by httptools
            cause = exc.__context__
            self.reject(cause if isinstance(cause, Rejected) else Rejected(400, "invalid HTTP request"))
        except Rejected as exc:
            self.reject(exc)
        except httptools.HttpParserUpgrade:
            self.reject(Rejected(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError:
            self.reject(Rejected(400, "invalid HTTP request"))

    # --- httptools ---
    def on_message_begin(self) -> None:
        self.url, self.headers, self.length = b"", [], None
        self.chunked = self.expect_100 = False
        self.head_bytes, self.in_head = 0, True
        self.deadline = self.loop.time() + self.limits.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_head_bytes:
            raise Rejected(431, f"the request head is larger than {self.limits.max_head_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name in FRAMING:
            if name == b"content-length":
                self.length = value
            elif name == b"transfer-encoding":
                self.chunked = True
            elif value.lower() == b"100-continue":
                self.expect_100 = True
        self.head_bytes += len(name) + len(value) + 4
        if len(self.headers) > self.limits.max_headers:
            raise Rejected(431, f"the request has more than {self.limits.max_headers} headers")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.state.busy(self)  # no longer one that may make room for a new connection
        if self.head_bytes + len(self.url) > self.limits.max_head_bytes:
            raise Rejected(431, f"the request head is larger than {self.limits.max_head_bytes} bytes")
        exchange = self._exchange()
        self.parsing = exchange
        length = self.length
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise Rejected(413, f"request body is larger than {self.limits.max_body_bytes} bytes")
        has_body = (length is not None and length != b"0") or self.chunked
        exchange.more_body = has_body  # (an eager app may answer before on_message_complete)
        self.deadline = self.loop.time() + self.limits.body_timeout_s if has_body else 0.0
        if self.current is None:  # its app starts once what this read brought of its body is in (data_received)
            self.current, self.start_pending = exchange, True
        else:
            self.queue.append(exchange)
            self._pause_reading()  # one request ahead is enough

    def _exchange(self) -> Exchange:
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        version = self.parser.get_http_version()
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": version,
            "server": self.server, "client": self.client, "scheme": "http",
            "method": self.parser.get_method().decode("ascii"), "root_path": "",
            "path": unquote(raw_path.decode("ascii", "replace")), "raw_path": raw_path,
            "query_string": parsed.query or b"", "headers": self.headers, "state": self.state.app_state.copy()}
        exchange = Exchange(self, scope, self.parser.should_keep_alive() and not self.state.stopping, self.expect_100)
        scope["extensions"] = {CLIENT_EXTENSION: exchange}
        return exchange

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.disconnected:
            return
        if exchange.body_size + len(body) > self.limits.max_body_bytes:
            raise Rejected(413, f"request body is larger than {self.limits.max_body_bytes} bytes")
        exchange.feed(body)
        if exchange.body_size > HIGH_WATER and not exchange.complete:
            self._pause_reading()

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.finish_body()
        self.deadline = 0.0  # until the response is complete, or the next request begins

    # --- serving ---
    def _run(self, exchange: Exchange) -> None:
        """Runs the request's app: on Python 3.12+ eagerly, up to its first wait, here in the loop's I/O phase,
        instead of one loop turn later (under load a turn is tens of milliseconds; `MODELYARD_EAGER=0`: not)."""
        self.current = exchange
        coro = self.state.run(exchange)
        if self.state.eager:
            exchange.task = asyncio.Task(coro, loop=self.loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        else:
            exchange.task = self.loop.create_task(coro)

    def body_taken(self) -> None:
        if self.read_paused and not self.queue:
            self._resume_reading()

    def response_complete(self, exchange: Exchange) -> None:
        if exchange is not self.current:
            return
        self.current = None
        if self.closing:
            return
        if exchange.more_body:  # answered before its body was read: the rest of it is not worth reading
            exchange.keep_alive = False
        if not exchange.keep_alive or self.state.stopping:
            if self.queue and exchange.keep_alive:  # pipelined behind it: the next one is told (the rest just closed)
                self.transport.write(error_response(503, "the gateway is shutting down; send it again", "shutdown"))
            self.close()
            return
        if self.queue:
            self._run(self.queue.pop(0))
            if not self.queue:
                self._resume_reading()
            return
        self._resume_reading()
        self.deadline = self.loop.time() + self.limits.idle_timeout_s
        self.state.waiting(self)

    def reject(self, rejected: Rejected) -> None:
        """A bound passed or a request that is not HTTP: answered here (if nothing was answered yet), then closed."""
        self.state.noted(f"rejected_{rejected.status}", f"requests refused with {rejected.status}")
        exchange = self.current
        if exchange is None or not exchange.started:
            code = {400: "invalid_request", 408: "request_timeout", 413: "request_too_large",
                    431: "request_header_fields_too_large", 503: "too_many_connections"}.get(rejected.status)
            self.transport.write(error_response(rejected.status, rejected.message, code or "rejected"))
        self.linger()

    def linger(self) -> None:
        """Half-closes after an answer to a client that may still be sending (closing with its bytes unread would
        reset the connection and lose the answer); what it still sends is dropped, for LINGER_S at most."""
        if self.closing or self.lingering:
            return
        self.lingering = True
        for exchange in (self.current, *self.queue):
            if exchange is not None and not exchange.complete:
                exchange.lost()
        if not self.transport.can_write_eof():
            self.close()
            return
        self.transport.write_eof()
        self._resume_reading()
        self.deadline = self.loop.time() + LINGER_S
        self.state.waiting(self)

    def expired(self) -> None:
        """The server's sweep found it past its deadline: slow head, slow body, or idle too long."""
        if self.lingering:
            self.close()
        elif self.parsing is not None or self.in_head:
            self.state.noted("timeout", "clients too slow to send a request, closed")
            self.reject(Rejected(408, "the request was not sent in time"))
        else:
            self.close()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()
        for exchange in (self.current, *self.queue):
            if exchange is not None and not exchange.complete:
                exchange.lost()

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()


class Throttled:
    """Log lines of one kind at most once per interval, with how many were left out since."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger, self.interval_s = logger, interval_s
        self.last: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def note(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval_s) >= self.interval_s:
            count = self.counts.pop(kind)
            self.last[kind] = now
            self.logger.info("%s (%d since the last such line; at most one every %.0f s)", message, count,
                             self.interval_s)
