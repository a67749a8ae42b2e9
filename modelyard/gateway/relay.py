from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from starlette.types import Receive, Scope, Send

from modelyard.gateway.errors import sse_error
from modelyard.routing.endpoints import Endpoint
from modelyard.spec.schema import Timeouts

UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError, OSError)
USAGE_MARK = b'"usage":{'
CLOCK_SLACK_S = 0.001


@dataclass
class Outcome:
    """How one relayed request ended; filled in as it goes, handed to `finish` once."""

    status: int = 0
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    usage: bytes = b""
    replica: str = ""
    body: bytes = b""  # the whole answer, kept only for a model whose config opts in to storing text


def split_usage_event(chunk: bytes, keep: bool) -> tuple[bytes, bytes]:
    """The chunk without the usage-only SSE event (unless `keep`), and that event; a byte search, no JSON decode."""
    index = chunk.find(USAGE_MARK)
    if index < 0:
        return chunk, b""
    start = chunk.rfind(b"data:", 0, index)
    end = chunk.find(b"\n\n", index)
    start = 0 if start < 0 else start
    end = len(chunk) if end < 0 else end + 2
    event = chunk[start:end]
    if keep or b'"choices":[]' not in event.replace(b" ", b""):
        return chunk, event
    return chunk[:start] + chunk[end:], event


def _cancel_pending(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


class Watchdog:
    """The between-chunks and total timeouts of one stream, as one timer that is not re-armed per chunk.

    The relay stamps `waiting_since` when it starts waiting for the next chunk and clears it when the chunk
    came; the timer, when it fires, re-arms itself for the moment that stamp runs out (or, while the relay is
    busy sending, one silence later), and only fails the stream when it has really been silent that long or
    is past its total deadline: then the upstream reader raises TimeoutError in the relay.
    """

    __slots__ = ("loop", "content", "between", "deadline", "waiting_since", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, content: aiohttp.StreamReader, between_s: float,
                 deadline: float) -> None:
        self.loop, self.content, self.between, self.deadline = loop, content, between_s, deadline
        self.waiting_since: float | None = None
        self.handle = loop.call_at(min(loop.time() + between_s, deadline), self._check)

    def _check(self) -> None:
        now = self.loop.time()
        since = self.waiting_since
        due = min((now if since is None else since) + self.between, self.deadline)
        if since is not None and now >= due - CLOCK_SLACK_S:  # a timer may fire a little early
            self.content.set_exception(TimeoutError())
            return
        self.handle = self.loop.call_at(due if since is not None else max(due, now), self._check)

    def cancel(self) -> None:
        self.handle.cancel()


class UpstreamStream:
    """An ASGI response that relays an engine's SSE stream chunk by chunk, as it arrives, without parsing it.

    The first chunk was already read (before it, a failure is retried on another replica). A client that
    disconnects closes the upstream connection at once, which aborts the engine's work. An upstream that fails
    mid-stream ends the stream with an SSE error event: no retry once tokens went out. The usage event that the
    gateway asked for on the client's behalf is recorded and not passed on unless the client asked for it too.
    """

    def __init__(self, upstream: aiohttp.ClientResponse, first: bytes, endpoint: Endpoint, timeouts: Timeouts,
                 keep_usage: bool, outcome: Outcome, finish: Callable[[Outcome], None], capture: bool = False) -> None:
        self.upstream, self.first, self.endpoint, self.timeouts = upstream, first, endpoint, timeouts
        self.keep_usage, self.outcome, self.finish, self.capture = keep_usage, outcome, finish, capture

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = asyncio.Event()
        upstream = self.upstream
        ended = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not ended:  # uvicorn also answers "disconnect" once the response is complete
                disconnected.set()
                upstream.close()

        watcher = asyncio.create_task(watch())
        outcome = self.outcome
        complete = False
        captured: list[bytes] | None = [] if self.capture else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s - (time.perf_counter() - outcome.started)
        content = upstream.content
        watchdog = Watchdog(loop, content, self.timeouts.between_chunks_s, deadline)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-modelyard-replica", self.endpoint.id.encode())]})
            chunk = self.first
            while True:
                if captured is not None:
                    captured.append(chunk)
                if USAGE_MARK in chunk:
                    chunk, outcome.usage = split_usage_event(chunk, self.keep_usage)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if disconnected.is_set():
                    break
                watchdog.waiting_since = loop.time()
                chunk = await content.readany()
                watchdog.waiting_since = None
                if not chunk:
                    complete = True
                    break
        except UPSTREAM_ERRORS as exc:
            if not disconnected.is_set():
                outcome.error = "timeout" if isinstance(exc, TimeoutError) else "upstream_error"
                message = ("the engine stopped sending" if isinstance(exc, TimeoutError)
                           else f"the engine failed mid-stream ({type(exc).__name__})")
                await send({"type": "http.response.body", "body": sse_error(message, outcome.error),
                            "more_body": True})
        finally:
            watchdog.cancel()
            if captured:
                outcome.body = b"".join(captured)
            ended = True
            if disconnected.is_set():
                outcome.error = outcome.error or "client_disconnected"
            if complete and not disconnected.is_set():
                upstream.release()
            else:
                upstream.close()
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            # a server that woke the watcher at the end (uvicorn) lets it finish on its own, which costs less
            # than cancelling it; with any other, it is cancelled on the next turn
            loop.call_soon(_cancel_pending, watcher)
            self.finish(outcome)
