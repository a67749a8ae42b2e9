from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import Receive, Scope, Send

from modelyard.gateway.errors import sse_error
from modelyard.gateway.protocol import Exchange
from modelyard.gateway.sse import SseUsage
from modelyard.gateway.upstream import Connection
from modelyard.spec.schema import Timeouts

log = logging.getLogger("modelyard.gateway")
UPSTREAM_ERRORS = (TimeoutError, OSError)  # OSError: ConnectionError and the upstream client's own errors
CLOCK_SLACK_S = 0.001
RELAY_BUDGET_S = 0.010  # a loop turn's time for relaying streams before the rest wait for a later turn (Pacer)
MAX_HOLD_S = 0.05  # the longest a stream waits in the pacer's line
MIN_QUOTA = 8  # streams let back per turn from the pacer's line, at least


class Shutdown(Exception):
    """The gateway stopped (SIGTERM) before the stream ended, after its drain time."""


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


class Pacer:
    """Bounds the time one loop turn spends relaying streams, so that a saturated gateway's turns stay short and a
    new request (its head read, its engine's first chunk relayed as it arrives) waits behind a few milliseconds of
    other streams' writes, not behind every stream's.

    The turn's first relayed read starts its clock. A stream relayed after `budget_s` of it stops being read (its
    engine's tokens wait in the socket and go out together later: fewer, larger reads) and waits in line. At the
    end of each turn, as many streams as were relayed within the budget are read again, oldest first, and so is
    every stream that waited `max_hold_s` already: a stream's tokens are never held longer than that. While every
    turn's relaying fits the budget (a gateway that keeps up), nothing waits.
    """

    __slots__ = ("budget_s", "max_hold_s", "clock", "turn_start", "within", "quota", "line", "timing", "scheduled")

    def __init__(self, budget_s: float = RELAY_BUDGET_S, max_hold_s: float = MAX_HOLD_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget_s, self.max_hold_s, self.clock = budget_s, max_hold_s, clock
        self.turn_start = 0.0
        self.within = 0  # streams relayed within the budget this turn
        self.quota = MIN_QUOTA  # streams let back from the line per turn
        self.line: deque[tuple[float, Pipe]] = deque()  # (when it was held, the stream), oldest first
        self.timing = self.scheduled = False

    def relayed(self, pipe: Pipe) -> None:
        """A read of `pipe`'s engine was written to its client."""
        if not self.timing:  # the turn's first relay: its clock starts
            self.timing, self.within = True, 1
            self.turn_start = self.clock()
            if not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._turn)
        elif (now := self.clock()) - self.turn_start <= self.budget_s:
            self.within += 1
        elif pipe.hold():
            self.line.append((now, pipe))

    def _turn(self) -> None:
        if self.timing:
            self.timing = False
            self.quota = max(self.within, MIN_QUOTA)
        line = self.line
        for _ in range(min(len(line), self.quota)):
            line.popleft()[1].unhold()
        if line:
            held_before = self.clock() - self.max_hold_s
            while line and line[0][0] <= held_before:
                line.popleft()[1].unhold()
        self.scheduled = bool(line)
        if line:  # the rest in later turns, whether or not anything is relayed meanwhile
            asyncio.get_running_loop().call_soon(self._turn)


class Pipe:
    """One stream's state between the engine's connection (which calls `feed` and `ended`), the client's exchange
    (`protocol.Exchange`: it calls `disconnect` and `shutdown`) and the relay's task. Made before the request is
    sent: `begin` starts the client's response as soon as the engine's first chunk is read."""

    __slots__ = ("loop", "conn", "sse", "captured", "client", "pacer", "headers", "out", "wake", "started", "began",
                 "finished", "error", "disconnected", "paused", "held", "watchdog")

    def __init__(self, keep_usage: bool, capture: bool, client: Exchange, headers: list[tuple[bytes, bytes]],
                 pacer: Pacer | None = None) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.conn: Connection | None = None
        self.sse = SseUsage(keep_usage)
        self.captured: list[bytes] | None = [] if capture else None
        self.client = client
        self.pacer = pacer
        self.headers = headers  # the response's own, after content-type and cache-control
        self.out: list[bytes] = []  # what goes out with the end of the response (the relay's task writes it)
        self.wake: asyncio.Future[None] = loop.create_future()
        self.started = self.finished = self.disconnected = self.paused = False
        self.held = False  # waiting in the pacer's line, its engine connection unread
        self.began = 0.0  # time.perf_counter() when the response started: the first byte's time
        self.error: BaseException | None = None
        self.watchdog: Watchdog | None = None

    def begin(self, conn: Connection, first: bytes = b"") -> None:
        """Starts the client's response and relays what `conn` sends from now on: the head and what arrived so far
        in one write. Called by the connection itself, in the callback that read a 200 answer's first bytes
        (`Connection.on_first`), or else by the relay's task with the chunk it read."""
        self.started, self.conn, client = True, conn, self.client
        self.began = time.perf_counter()
        client.start(200, [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                           *self.headers])
        client.on_disconnect(self.disconnect)
        client.on_shutdown(self.shutdown)
        if first:
            self.feed(first)
        conn.attach(self.feed, self.ended)  # what it read already is fed now, with the head

    def _wake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    def feed(self, chunk: bytes) -> None:
        if self.captured is not None:
            self.captured.append(chunk)
        chunk = self.sse.feed(chunk)
        if self.watchdog is not None and not self.paused:
            self.watchdog.waiting_since = self.loop.time()
        if chunk:
            self._queue(chunk)

    def _queue(self, chunk: bytes) -> None:
        """Writes a piece of the stream at once, as one HTTP chunk (the connection hands over what one read brought
        in one piece), with the response's head the first time; the last piece, read with the answer's end, waits
        for the relay's task to write it with the end of the response."""
        conn = self.conn
        if conn is None or conn.complete or self.finished:
            self.out.append(chunk)
            return
        client = self.client
        if self.disconnected or client.disconnected:
            self.disconnect()
            return
        if self.out:
            self.out.append(chunk)
            chunk = b"".join(self.out)
            self.out.clear()
        try:
            client.write(chunk)
        except Exception:  # one broken client must not break the engine connection's callback
            log.exception("writing to a client failed; the stream is dropped")
            self.disconnect()
            return
        if client.write_paused:  # the client reads slower than the engine writes: stop reading the engine
            self.pause()
        elif self.pacer is not None:
            self.pacer.relayed(self)

    def end_response(self) -> None:
        """Ends the client's response with what is left to write (and the head, if nothing was written yet)."""
        client = self.client
        body = b""
        if self.out and not (self.disconnected or client.disconnected):
            body = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out.clear()
        client.end(body)

    def pause(self) -> None:
        if not self.paused and self.conn is not None:
            self.paused = True
            self.conn.pause()  # (already, if the pacer holds it)
            if self.watchdog is not None:
                self.watchdog.waiting_since = None  # waiting for the client, not the engine
            self._wake()

    def resume(self) -> None:
        if self.paused and self.conn is not None:
            self.paused = False
            if not self.held:
                self.conn.resume()
            if self.watchdog is not None:
                self.watchdog.waiting_since = self.loop.time()

    def hold(self) -> bool:
        """The pacer's: stop reading the engine until `unhold` (False: nothing to hold, the stream is ending)."""
        conn = self.conn
        if self.held or conn is None or conn.complete or self.finished:
            return False
        self.held = True
        conn.pause()
        return True

    def unhold(self) -> None:
        self.held = False
        if not self.paused and not self.finished and self.conn is not None:
            self.conn.resume()

    def ended(self, error: BaseException | None) -> None:
        if not self.finished:
            if error is None and (rest := self.sse.end()):  # a last event without its blank line
                self._queue(rest)
            self.finished, self.error = True, error
            self._wake()

    def expire(self) -> None:
        """The watchdog's verdict: the engine went silent (or the stream ran out of time)."""
        self._stop(TimeoutError())

    def shutdown(self) -> None:
        """The gateway's drain time is over: the stream ends now, with an error event."""
        self._stop(Shutdown())

    def _stop(self, error: BaseException) -> None:
        if not self.finished:
            self.finished, self.error = True, error
            if self.conn is not None:
                self.conn.close()
            self._wake()

    def disconnect(self) -> None:
        """The client went away: the engine's connection is closed at once, which aborts its work."""
        if not self.disconnected:
            self.disconnected = self.finished = True
            if self.conn is not None:
                self.conn.close()
            self._wake()


class UpstreamStream:
    """An ASGI response that relays an engine's SSE stream chunk by chunk, as it arrives, without parsing it.

    Its `Pipe` was made before the request went out, and usually started already: the engine's connection calls
    `Pipe.begin` in the callback that reads the first chunk (before it, a failure is retried on another replica),
    so the head and that chunk go out at once, not when the request's task next runs. After it, each piece the
    engine sends goes from its connection's callback to the client's socket (through the request's
    `protocol.Exchange`, our server's public per-request API: `scope["extensions"]["modelyard.client"]`), and the
    client's back-pressure pauses reading from the engine. A client that disconnects closes the upstream
    connection at once, which aborts the engine's work. An upstream that fails mid-stream ends the stream with an
    SSE error event: no retry once tokens went out. The usage event that the gateway asked for on the client's
    behalf is recorded and not passed on unless the client asked for it too.
    """

    def __init__(self, conn: Connection, pipe: Pipe, first: bytes, timeouts: Timeouts, outcome: Outcome,
                 finish: Callable[[Outcome], None]) -> None:
        self.conn, self.pipe, self.first, self.timeouts = conn, pipe, first, timeouts
        self.outcome, self.finish = outcome, finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        conn, pipe, outcome, client = self.conn, self.pipe, self.outcome, self.pipe.client
        deadline = loop.time() + self.timeouts.total_s - (time.perf_counter() - outcome.started)
        watchdog = pipe.watchdog = Watchdog(loop, pipe.expire, self.timeouts.between_chunks_s, deadline)
        try:
            if not pipe.started:
                pipe.begin(conn, self.first)
            client.on_shutdown(pipe.shutdown)  # (the request's watch gave its own back before this response ran)
            while not pipe.finished:
                if pipe.paused:
                    # the client's socket is full: wait until it drains, or the watchdog's total deadline ends it
                    drained = client.drain()
                    await asyncio.wait((drained, pipe.wake), return_when=asyncio.FIRST_COMPLETED)
                    if drained.done():
                        pipe.resume()
                else:
                    await pipe.wake
                if pipe.wake.done():
                    pipe.wake = loop.create_future()
            if pipe.error is not None and not pipe.disconnected:
                if isinstance(pipe.error, Shutdown):
                    outcome.error, message = "shutdown", "the gateway is shutting down"
                elif isinstance(pipe.error, TimeoutError):
                    outcome.error, message = "timeout", "the engine stopped sending"
                else:
                    outcome.error = "upstream_error"
                    message = f"the engine failed mid-stream ({type(pipe.error).__name__})"
                pipe.out.append(sse_error(message, outcome.error))
        finally:
            watchdog.cancel()
            pipe.watchdog = None  # (it refers back to the pipe)
            outcome.events, outcome.usage = pipe.sse.events, pipe.sse.usage
            if pipe.captured:
                outcome.body = b"".join(pipe.captured)
            if pipe.disconnected:
                outcome.error = outcome.error or "client_disconnected"
            if pipe.finished and pipe.error is None and not pipe.disconnected:
                conn.release()
            else:
                conn.close()
            try:
                pipe.end_response()  # what the last callback left, with the end of the response
            except Exception:  # a client's socket that fails must not keep the request from being recorded
                log.exception("ending a stream failed")
            self.finish(outcome)
