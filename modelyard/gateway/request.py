"""A generation request as the gateway reads it: the paths it serves, the headers it needs, the body, and the
`Call` that carries the request through admission, the relay and its record (`gateway/app.py`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from modelyard.gateway.auth import TWICE, Twice
from modelyard.gateway.scope import ClientWatch
from modelyard.gateway.tenancy import Ticket
from modelyard.routing.contracts import SESSION_HEADER, RouteRequest
from modelyard.spec.schema import BaseModelSpec

if TYPE_CHECKING:
    from modelyard.gateway.protocol import Exchange
    from modelyard.gateway.relay import Pipe

MAX_BODY_BYTES = 8 * 1024 * 1024
SESSION_HEADER_BYTES = SESSION_HEADER.encode()
REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")  # a client's id is kept when it is this; else one is made
# the gateway's generation paths, and the path each is served as (peers spell rerank three ways)
GENERATION_PATHS = {"/v1/chat/completions": "/v1/chat/completions", "/v1/completions": "/v1/completions",
                    "/v1/embeddings": "/v1/embeddings", "/v1/rerank": "/v1/rerank", "/rerank": "/v1/rerank",
                    "/v2/rerank": "/v1/rerank"}
STREAMED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass
class Call:
    """One generation request on its way: what the relay needs to know about it."""

    path: str  # as the engine serves it
    body: bytes
    payload: dict[str, Any]
    model: BaseModelSpec
    stream: bool
    ticket: Ticket | None  # once admitted
    route: RouteRequest
    keep_usage: bool = True
    client: Exchange | None = None  # our server's per-request API (gateway/protocol.py), which a stream writes to
    pipe: Pipe | None = None  # the stream of the attempt in flight (gateway/relay.py), made before its request is sent
    arrived: float = 0.0  # time.perf_counter() when the request came in, before any wait
    request_id: bytes = b""
    recorded: bool = False  # `Gateway.record` ran: the request's limits and slot are given back, its usage written
    watch: ClientWatch | None = None
    relay_started: float = 0.0  # a disaggregated model's request: when its prefill leg started (gateway/disagg.py)


def read_headers(scope: Scope) -> tuple[str | Twice | None, str | None, bytes]:
    """The headers a generation request needs: its key, its session id, its request id (the client's, when it is
    one, else a new one; kept in the scope for the response's header)."""
    authorization: str | Twice | None = None
    session = None
    request_id = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1") if authorization is None else TWICE
        elif name == SESSION_HEADER_BYTES:
            session = value.decode("latin-1")
        elif name == REQUEST_ID_HEADER and REQUEST_ID.fullmatch(value):
            request_id = value
    request_id = scope["modelyard.request_id"] = request_id or os.urandom(12).hex().encode()
    return authorization, session, request_id


async def read_body(receive: Receive) -> bytes:
    """The request's body, as Starlette's `Request.body()` reads it (ClientDisconnect if the client left)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


__all__ = ["GENERATION_PATHS", "MAX_BODY_BYTES", "REQUEST_ID_HEADER", "STREAMED_PATHS", "Call", "read_body",
           "read_headers"]
