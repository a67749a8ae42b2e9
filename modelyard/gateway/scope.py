"""A generation request's one scope (DESIGN.md): the client watched from admission on, and what the request holds
(its key's limits and admission slot, its replica's in-flight count, the engine connection) given back once,
however it ends.

The watch costs no task where the server tells of a lost client by a callback (the gateway's own server: a
`modelyard.client` object in the scope's extensions); under any other server it is one task waiting on
`receive()`. When the client leaves before the answer starts (held for a replica, queued, waiting for the first
token, generating a non-streamed answer), the request's task is cancelled: each wait gives back what it holds on
the way out (the queue its place, the relay the replica and the engine connection, which aborts the engine's
work), and `Gateway.handle` records the request as `client_disconnected` (status 499). The same happens to a
request still waiting for its answer when the gateway's drain time ends (`shutdown`, 503). Once a stream's first
chunk is relayed, the stream watches the client and the shutdown itself (relay.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.types import Receive, Scope

from modelyard.gateway.protocol import CLIENT_EXTENSION

CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection before the answer
T = TypeVar("T")


def _nothing() -> None:
    pass


class ClientWatch:
    """Cancels the request's task when its client goes away, or when the gateway's drain time ends before the
    answer has started (the server's `on_shutdown`), until `stop()`; `reason` says which."""

    __slots__ = ("reason", "_task", "_stop", "_client")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.reason = ""  # "client_disconnected" | "shutdown", once the watch cancelled the task
        self._task = asyncio.current_task()
        self._client = client = scope.get("extensions", {}).get(CLIENT_EXTENSION)
        if client is not None:
            self._stop: Callable[[], object] = client.on_disconnect(self._left)
            client.on_shutdown(self._shut_down)
        else:
            waiter = asyncio.ensure_future(self._receive(receive))
            self._stop = waiter.cancel

    async def _receive(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._left()

    def _left(self) -> None:
        self._cancel("client_disconnected")

    def _shut_down(self) -> None:
        self._cancel("shutdown")

    def _cancel(self, reason: str) -> None:
        if not self.reason and self._task is not None:
            self.reason = reason
            self._task.cancel()

    def stop(self) -> None:
        self._stop()
        self._stop = _nothing  # the watch and its callback refer to each other: freed now, not by the collector
        if self._client is not None:
            self._client.on_shutdown(None)

    def absorb(self) -> tuple[int, str] | None:
        """In an `except CancelledError`: the status and error kind to record if the cancellation was this
        watch's (which is then taken back, so the task can record the request); None if it was not."""
        if not self.reason or self._task is None:
            return None
        self._task.uncancel()
        return ended_by(self.reason)


def ended_by(reason: str) -> tuple[int, str]:
    """The status and error kind of a request the watch cancelled."""
    return (CLIENT_GONE, reason) if reason == "client_disconnected" else (503, reason)


async def admit_shielded(admit: Awaitable[T], undo: Callable[[T], Awaitable[Any]]) -> T:
    """`admit`, run to its end even if the caller is cancelled meanwhile (a shared limiter's script counts the
    request in Redis: abandoning the answer would hold the key's slot until its lease expires); what it granted
    to a cancelled caller is given back with `undo`."""
    future = asyncio.ensure_future(admit)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def given_back(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                asyncio.ensure_future(undo(done.result()))

        future.add_done_callback(given_back)
        raise


__all__ = ["CLIENT_GONE", "ClientWatch", "admit_shielded", "ended_by"]
