from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from modelyard.gateway.errors import sse_error
from modelyard.gateway.sse import SseUsage
from modelyard.gateway.upstream import Connection
from modelyard.routing.endpoints import Endpoint
from modelyard.spec.schema import Timeouts

log = logging.getLogger("modelyard.gateway")
UPSTREAM_ERRORS = (TimeoutError, OSError)  # OSError: ConnectionError and the upstream client's own errors
CLOCK_SLACK_S = 0.001


@dataclass
class Outcome:
    """How one relayed request ended; filled in as it goes, handed to `finish` once."""

    status: int = 0
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    usage: bytes = b""  # the answer's usage: a non-streamed body, or the data of the stream's usage event
    events: int = 0  # a stream's data events relayed (gateway/sse.py): its charge when the engine sent no usage
    replica: str = ""
    body: bytes = b""  # the whole answer, kept only for a model whose config opts in to storing text


def _cancel_pending(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


def start_direct(send: Send, headers: list[tuple[bytes, bytes]]) -> tuple[Any, bytes] | None:
    """Starts a chunked 200 response on uvicorn's httptools request cycle behind `send`, as its `send` would, but
    returns the head instead of writing it: the relay writes it with the first chunk, then each chunk to the
    cycle's transport itself (no `send` awaited per chunk), and ends the response with its last chunk (`_Pipe.
    write_out`). None under any other server, or when uvicorn would do more than write (access log, a paused
    client): the relay then awaits `send`. uvicorn is pinned; tests/gateway/test_upstream.py fails if this stops
    finding the cycle."""
    cycle = getattr(send, "__self__", None)
    if (type(cycle) is not RequestResponseCycle or cycle.response_started or cycle.disconnected or cycle.access_log
            or cycle.flow.write_paused or cycle.scope["method"] == "HEAD"):
        return None
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = True
    parts = [STATUS_LINE[200]]
    for name, value in (*cycle.default_headers, *headers):
        parts += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"transfer-encoding: chunked\r\n\r\n")
    return cycle, b"".join(parts)


def watch_disconnect(cycle: Any, pipe: _Pipe) -> bool:
    """Has the pipe told when uvicorn's connection is lost, by a callback on the event that uvicorn sets then (no
    task per stream, as a `receive()` loop would need). False if that event is not as expected (the caller then
    watches with `receive()`)."""
    event = cycle.message_event
    waiters = getattr(event, "_waiters", None)
    if event.is_set() or not isinstance(waiters, collections.deque):
        return False
    loop = asyncio.get_running_loop()

    def woken(_: asyncio.Future[None]) -> None:
        if cycle.disconnected:
            pipe.disconnect()
        elif not cycle.response_complete and not event.is_set():  # woken for something else: watch again
            watch_disconnect(cycle, pipe)

    waiter: asyncio.Future[None] = loop.create_future()
    waiter.add_done_callback(woken)
    waiters.append(waiter)
    return True


class Watchdog:
    """The between-chunks and total timeouts of one stream, as one timer that is not re-armed per chunk.

    The relay stamps `waiting_since` whenever it waits for the engine (after each chunk) and clears it while the
    client cannot take more; the timer, when it fires, re-arms itself for the moment that stamp runs out (or one
    silence later when it is cleared), and calls `expire` only when the engine has really been silent that long
    or the stream is past its total deadline.
    """

    __slots__ = ("loop", "expire", "between", "deadline", "waiting_since", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[], None], between_s: float,
                 deadline: float) -> None:
        self.loop, self.expire, self.between, self.deadline = loop, expire, between_s, deadline
        self.waiting_since: float | None = loop.time()
        self.handle = loop.call_at(min(loop.time() + between_s, deadline), self._check)

    def _check(self) -> None:
        now = self.loop.time()
        since = self.waiting_since
        due = min((now if since is None else since) + self.between, self.deadline)
        if (since is not None or now >= self.deadline) and now >= due - CLOCK_SLACK_S:  # timers may fire early
            self.expire()
            return
        self.handle = self.loop.call_at(due if since is not None else max(due, now), self._check)

    def cancel(self) -> None:
        self.handle.cancel()


class WriteBatch:
    """The relay's writes to clients, made once per event-loop turn instead of in each engine connection's callback.

    The engines' chunks are read in the loop's I/O phase, which, under load, goes on as long as sockets are ready
    (libuv polls again at once, up to 48 times, while a poll fills its 1,024 events); a write made there would keep
    the tasks that answer new requests (run between polls) waiting behind every stream's writes. Here a chunk is
    queued, and one callback writes every queued stream's chunks (several of one stream as one HTTP chunk) in the
    turn's task phase, in order with those tasks.
    """

    __slots__ = ("pipes", "scheduled")

    def __init__(self) -> None:
        self.pipes: list[_Pipe] = []
        self.scheduled = False

    def add(self, pipe: _Pipe) -> None:
        self.pipes.append(pipe)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pipes, self.pipes = self.pipes, []
        for pipe in pipes:
            if pipe.queued:  # else its task wrote it already
                try:
                    pipe.write_out()
                except Exception:  # one broken stream must not keep the others' chunks unwritten
                    log.exception("writing to a client failed; the stream is dropped")
                    pipe.disconnect()


class _Pipe:
    """One stream's state between the engine's connection (which calls `feed` and `ended`) and the relay's task."""

    __slots__ = ("loop", "conn", "outcome", "sse", "captured", "cycle", "head", "batch", "out", "queued",
                 "wake", "pending", "finished", "error", "disconnected", "paused", "watchdog")

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Connection, outcome: Outcome, keep_usage: bool,
                 capture: bool, batch: WriteBatch) -> None:
        self.loop, self.conn, self.outcome = loop, conn, outcome
        self.sse = SseUsage(keep_usage)
        self.captured: list[bytes] | None = [] if capture else None
        self.cycle: Any = None
        self.head = b""  # the response's head, written with the first chunk
        self.batch = batch
        self.out: list[bytes] = []  # with a direct cycle: chunks for the batch to write
        self.queued = False  # in the batch's list
        self.wake: asyncio.Future[None] = loop.create_future()
        self.pending: list[bytes] = []  # without a direct cycle: chunks for the task to send
        self.finished = self.disconnected = self.paused = False
        self.error: BaseException | None = None
        self.watchdog: Watchdog | None = None

    def _wake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    def feed(self, chunk: bytes) -> None:
        if self.captured is not None:
            self.captured.append(chunk)
        sse = self.sse
        chunk = sse.feed(chunk)
        self.outcome.events, self.outcome.usage = sse.events, sse.usage
        if self.watchdog is not None and not self.paused:
            self.watchdog.waiting_since = self.loop.time()
        if chunk:
            self._queue(chunk)

    def _queue(self, chunk: bytes) -> None:
        if self.cycle is not None:
            self.out.append(chunk)
            if not self.queued:
                self.queued = True
                self.batch.add(self)
        else:
            self.pending.append(chunk)
            self.pause()  # until the task has sent it

    def write_out(self, final: bool = False) -> None:
        """Writes what `feed` queued (the response's head first), straight to the client's transport, as one HTTP
        chunk; `final`: with the end of the response, which it completes as uvicorn's `send` does."""
        self.queued = False
        cycle = self.cycle
        if self.disconnected or cycle.disconnected or cycle.transport.is_closing():
            self.out.clear()
            if not final:
                self.disconnect()
            return
        if self.out:
            body = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            data = b"%x\r\n%b\r\n" % (len(body), body)
        elif not final and not self.head:
            return
        else:
            data = b""
        if self.head:
            data, self.head = self.head + data, b""
        if final:
            cycle.transport.write(data + b"0\r\n\r\n")
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                cycle.transport.close()
            cycle.on_response()
            return
        cycle.transport.write(data)
        if cycle.flow.write_paused:  # the client reads slower than the engine writes: stop reading the engine
            self.pause()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.conn.pause()
            if self.watchdog is not None:
                self.watchdog.waiting_since = None  # waiting for the client, not the engine
            self._wake()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.conn.resume()
            if self.watchdog is not None:
                self.watchdog.waiting_since = self.loop.time()

    def ended(self, error: BaseException | None) -> None:
        if not self.finished:
            if error is None and (rest := self.sse.end()):  # a last event without its blank line
                self.outcome.events, self.outcome.usage = self.sse.events, self.sse.usage
                self._queue(rest)
            self.finished, self.error = True, error
            self._wake()

    def expire(self) -> None:
        """The watchdog's verdict: the engine went silent (or the stream ran out of time)."""
        if not self.finished:
            self.finished, self.error = True, TimeoutError()
            self.conn.close()
            self._wake()

    def disconnect(self) -> None:
        """The client went away: the engine's connection is closed at once, which aborts its work."""
        if not self.disconnected:
            self.disconnected = self.finished = True
            self.conn.close()
            self._wake()


class UpstreamStream:
    """An ASGI response that relays an engine's SSE stream chunk by chunk, as it arrives, without parsing it.

    The first chunk was already read (before it, a failure is retried on another replica). After it, each piece
    the engine sends goes from its connection's callback straight to the client's transport (under uvicorn; under
    another server through `send`), and the client's back-pressure pauses reading from the engine. A client that
    disconnects closes the upstream connection at once, which aborts the engine's work. An upstream that fails
    mid-stream ends the stream with an SSE error event: no retry once tokens went out. The usage event that the
    gateway asked for on the client's behalf is recorded and not passed on unless the client asked for it too.
    """

    def __init__(self, conn: Connection, first: bytes, endpoint: Endpoint, timeouts: Timeouts,
                 keep_usage: bool, outcome: Outcome, finish: Callable[[Outcome], None], batch: WriteBatch,
                 capture: bool = False, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.conn, self.first, self.endpoint, self.timeouts = conn, first, endpoint, timeouts
        self.keep_usage, self.outcome, self.finish, self.capture = keep_usage, outcome, finish, capture
        self.batch, self.headers = batch, headers or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        conn, outcome = self.conn, self.outcome
        pipe = _Pipe(loop, conn, outcome, self.keep_usage, self.capture, self.batch)
        responded = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not responded:  # uvicorn also answers "disconnect" once the response is complete
                pipe.disconnect()

        watcher: asyncio.Task[None] | None = None
        deadline = loop.time() + self.timeouts.total_s - (time.perf_counter() - outcome.started)
        watchdog = pipe.watchdog = Watchdog(loop, pipe.expire, self.timeouts.between_chunks_s, deadline)
        try:
            headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                       (b"x-modelyard-replica", self.endpoint.id.encode()), *self.headers]
            direct = start_direct(send, headers)
            if direct is None:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            else:
                pipe.cycle, pipe.head = direct
            if pipe.cycle is None or not watch_disconnect(pipe.cycle, pipe):
                watcher = asyncio.create_task(watch())
            pipe.feed(self.first)
            if pipe.cycle is not None:
                pipe.write_out()  # the head and the first chunk at once, not in the next turn
            if not pipe.finished:
                conn.attach(pipe.feed, pipe.ended)
            while True:
                if pipe.pending:
                    body, pipe.pending = b"".join(pipe.pending), []
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    pipe.resume()
                elif pipe.paused and not pipe.finished:
                    # the client's socket is full: wait until it drains, or the watchdog's total deadline ends it
                    drained = asyncio.ensure_future(pipe.cycle.flow.drain())
                    await asyncio.wait((drained, pipe.wake), return_when=asyncio.FIRST_COMPLETED)
                    if pipe.wake.done():
                        pipe.wake = loop.create_future()
                    if drained.done():
                        pipe.resume()
                    else:
                        drained.cancel()
                elif pipe.finished:
                    break
                else:
                    await pipe.wake
                    pipe.wake = loop.create_future()
            if pipe.error is not None and not pipe.disconnected:
                outcome.error = "timeout" if isinstance(pipe.error, TimeoutError) else "upstream_error"
                message = ("the engine stopped sending" if isinstance(pipe.error, TimeoutError)
                           else f"the engine failed mid-stream ({type(pipe.error).__name__})")
                if pipe.cycle is not None:
                    pipe.out.append(sse_error(message, outcome.error))
                else:
                    await send({"type": "http.response.body", "body": sse_error(message, outcome.error),
                                "more_body": True})
        finally:
            watchdog.cancel()
            if pipe.captured:
                outcome.body = b"".join(pipe.captured)
            responded = True
            if pipe.disconnected:
                outcome.error = outcome.error or "client_disconnected"
            if pipe.finished and pipe.error is None and not pipe.disconnected:
                conn.release()
            else:
                conn.close()
            with contextlib.suppress(Exception):
                if pipe.cycle is not None:  # what the last callback queued, with the end of the response
                    pipe.write_out(final=True)
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            if watcher is not None:
                # a server that woke the watcher at the end (uvicorn) lets it finish on its own, which costs less
                # than cancelling it; with any other, it is cancelled on the next turn
                loop.call_soon(_cancel_pending, watcher)
            self.finish(outcome)
