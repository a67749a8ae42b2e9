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


@dataclass
class Outcome:
    """How one relayed request ended; filled in as it goes, handed to `finish` once."""

    status: int = 0
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    body: bytes = b""


class UpstreamStream:
    """An ASGI response that relays an engine's SSE stream chunk by chunk, as it arrives, without parsing it.

    A client that disconnects closes the upstream connection at once, which aborts the engine's work.
    An upstream that fails mid-stream ends the stream with an SSE error event (no retry once tokens went out).
    """

    def __init__(self, upstream: aiohttp.ClientResponse, endpoint: Endpoint, timeouts: Timeouts,
                 outcome: Outcome, finish: Callable[[Outcome], None]) -> None:
        self.upstream, self.endpoint, self.timeouts = upstream, endpoint, timeouts
        self.outcome, self.finish = outcome, finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = asyncio.Event()
        upstream = self.upstream

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            upstream.close()

        watcher = asyncio.create_task(watch())
        outcome = self.outcome
        complete = False
        deadline = outcome.started + self.timeouts.total_s
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-modelyard-replica", self.endpoint.id.encode())]})
            outcome.status = 200
            last = b""
            while True:
                budget = min(self.timeouts.between_chunks_s, deadline - time.perf_counter())
                async with asyncio.timeout(max(budget, 0.0)):
                    chunk = await upstream.content.readany()
                if not chunk:
                    complete = True
                    break
                if outcome.first_byte is None:
                    outcome.first_byte = time.perf_counter()
                last = chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if disconnected.is_set():
                    break
            outcome.body = last
        except UPSTREAM_ERRORS as exc:
            if not disconnected.is_set():
                outcome.error = "timeout" if isinstance(exc, TimeoutError) else "upstream_error"
                message = ("the engine stopped sending" if isinstance(exc, TimeoutError)
                           else f"the engine failed mid-stream ({type(exc).__name__})")
                await send({"type": "http.response.body", "body": sse_error(message, outcome.error),
                            "more_body": True})
        finally:
            watcher.cancel()
            if disconnected.is_set():
                outcome.error = outcome.error or "client_disconnected"
            if complete and not disconnected.is_set():
                upstream.release()
            else:
                upstream.close()
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.finish(outcome)
