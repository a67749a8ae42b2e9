"""The gateway's HTTP/1.1 server (gateway/protocol.py, gateway/server.py) as a library: raw connections on
loopback against small ASGI apps, each server on a free port and always shut down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from modelyard.gateway.protocol import CLIENT_EXTENSION, Exchange, Limits, Throttled
from modelyard.gateway.server import Server

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
WAIT_S = 10.0  # a bound on every wait, never a timing that is asserted


async def echo(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"{request.method} {request.url.path} {len(body)}")


def starlette() -> Starlette:
    return Starlette(routes=[Route("/{name}", echo, methods=["GET", "POST", "HEAD"])])


@contextlib.asynccontextmanager
async def serving(app: App, limits: Limits | None = None, drain_s: float = 5.0) -> AsyncIterator[tuple[int, Server]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = Server(app, limits, [(b"x-test-server", b"1")], drain_s=drain_s)
    try:
        assert await server.start(sock)
        yield sock.getsockname()[1], server
    finally:
        await server.shutdown()
        sock.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response: its status line, headers, and body (by Content-Length, chunked, or to the close)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines)}
    if b"content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), WAIT_S)
    elif headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int(await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT_S), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = await asyncio.wait_for(reader.read(), WAIT_S)
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (after anything it still sends)."""
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), WAIT_S):
            pass
    return True


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async def main() -> None:
        async with serving(starlette()) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                         b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(reader))[2] == b"GET /a 0"
            assert (await response(reader))[2] == b"POST /b 5"
            status, headers, _ = await asyncio.wait_for(_head_only(reader), WAIT_S)
            assert status == b"HTTP/1.1 200 OK" and headers[b"content-length"] == b"9"  # HEAD: no body follows
            writer.write(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, still open
            status, headers, body = await response(reader)
            assert body == b"GET /d 0" and headers[b"x-test-server"] == b"1" and b"date" in headers
            writer.close()

    run(main)


async def _head_only(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head[:-4].split(b"\r\n")
    return status, {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines)}, b""


def test_a_chunked_request_body_and_expect_100_continue() -> None:
    async def main() -> None:
        async with serving(starlette()) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            assert (await response(reader))[2] == b"POST /a 5"
            writer.write(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"wxyz")
            assert (await response(reader))[2] == b"POST /b 4"
            writer.close()

    run(main)


async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The hot path's API: a streamed response written straight through the request's client object."""
    if scope["type"] != "http":
        return
    client: Exchange = scope["extensions"][CLIENT_EXTENSION]
    client.start(200, [(b"content-type", b"text/event-stream")])
    client.write(b"data: 1\n\n")
    client.write(b"data: 2\n\n")
    client.end(b"data: [DONE]\n\n")


def test_a_client_asking_connection_close_gets_it_on_the_direct_path() -> None:
    """The client's `Connection: close` on a response written through the hot path's API: the header, then the close."""
    async def main() -> None:
        async with serving(streamer) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Content-Length: 0\r\n\r\n")
            status, headers, body = await response(reader)
            assert headers[b"connection"] == b"close" and headers[b"transfer-encoding"] == b"chunked"
            assert body == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
            assert await closed(reader)
            writer.close()

    run(main)


def test_an_apps_own_connection_close_header_ends_the_connection() -> None:
    """uvicorn's `send` honors an app's `connection: close`; the relay's direct writes on main skipped that check."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        client: Exchange = scope["extensions"][CLIENT_EXTENSION]
        client.start(200, [(b"content-type", b"text/event-stream"), (b"connection", b"close")])
        client.end(b"data: [DONE]\n\n")

    async def main() -> None:
        async with serving(app) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            status, headers, body = await response(reader)
            assert headers[b"connection"] == b"close" and body == b"data: [DONE]\n\n"
            assert await closed(reader)
            writer.close()

    run(main)


def test_http_1_0_streams_until_close_without_chunks() -> None:
    async def main() -> None:
        async with serving(streamer) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
            status, headers, body = await response(reader)  # no length, not chunked: read to the close
            assert b"transfer-encoding" not in headers and headers[b"connection"] == b"close"
            assert body == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
            writer.close()

    run(main)


@pytest.mark.parametrize("head", [b"X-Big: " + b"a" * 40_000 + b"\r\n",
                                  b"".join(b"X-%d: 1\r\n" % i for i in range(101))], ids=["bytes", "count"])
def test_a_head_past_its_bounds_is_431_before_it_is_read_whole(head: bytes) -> None:
    async def main() -> None:
        async with serving(starlette()) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n" + head)  # never ends its head
            status, headers, body = await response(reader)
            assert status.startswith(b"HTTP/1.1 431") and b"request_header_fields_too_large" in body
            assert await closed(reader)
            writer.close()

    run(main)


def test_a_body_past_the_limit_is_413_as_soon_as_it_passes() -> None:
    limits = Limits(max_body_bytes=1000)

    async def main() -> None:
        async with serving(starlette(), limits) as (port, _):
            reader, writer = await connect(port)  # a declared length: refused before a byte of the body
            writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            status, _, body = await response(reader)
            assert status.startswith(b"HTTP/1.1 413") and b"request_too_large" in body
            writer.close()
            reader, writer = await connect(port)  # chunked: refused once the bytes received pass the limit
            writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%b\r\n" % (1001, b"z" * 1001))  # and never ends
            status, _, _ = await response(reader)
            assert status.startswith(b"HTTP/1.1 413")
            writer.close()

    run(main)


def test_slow_and_idle_clients_are_closed() -> None:
    limits = Limits(head_timeout_s=0.2, body_timeout_s=0.2, idle_timeout_s=0.2)

    async def main() -> None:
        async with serving(starlette(), limits) as (port, server):
            silent, _ = await connect(port)  # connects, sends nothing
            slow_head, w1 = await connect(port)
            w1.write(b"GET /a HTTP/1.1\r\nHost: x\r\n")  # half a head (slowloris)
            slow_body, w2 = await connect(port)
            w2.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            idle, w3 = await connect(port)
            w3.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(idle))[2] == b"GET /a 0"
            assert await closed(silent) and await closed(idle)
            assert (await response(slow_head))[0].startswith(b"HTTP/1.1 408")
            assert (await response(slow_body))[0].startswith(b"HTTP/1.1 408")
            assert server.state is not None
            for _ in range(50):
                if not server.state.connections:
                    break
                await asyncio.sleep(0.05)
            assert not server.state.connections

    run(main)


def test_past_max_connections_an_idle_one_makes_room_else_503() -> None:
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            await release.wait()
        await PlainTextResponse("ok")(scope, receive, send)

    async def main() -> None:
        async with serving(app, Limits(max_connections=2)) as (port, _):
            idle, _ = await connect(port)
            busy, w1 = await connect(port)
            w1.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.1)
            fresh, w2 = await connect(port)  # takes the place of the one that sends nothing
            w2.write(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(fresh))[2] == b"ok"
            assert await closed(idle)
            w2.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")  # both connections now serve a request
            await asyncio.sleep(0.1)
            refused, _ = await connect(port)
            status, _, body = await response(refused)
            assert status.startswith(b"HTTP/1.1 503") and b"too_many_connections" in body
            release.set()
            assert (await response(busy))[2] == b"ok"

    run(main)


def test_disconnect_callback_from_the_request_head_on_and_none_after_the_response() -> None:
    seen: list[str] = []
    registered = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        client: Exchange = scope["extensions"][CLIENT_EXTENSION]
        client.on_disconnect(lambda: seen.append(scope["path"]))
        client.on_disconnect(lambda: seen.append("unsubscribed"))()  # what it returns takes it back
        registered.set()
        if scope["path"] == "/wait":
            while not client.disconnected:  # as a request waiting in the admission queue would
                await asyncio.sleep(0.01)
            return
        await PlainTextResponse("ok")(scope, receive, send)

    async def main() -> None:
        async with serving(app) as (port, _):
            reader, writer = await connect(port)
            writer.write(b"GET /done HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(reader))[2] == b"ok"
            registered.clear()
            writer.write(b"POST /wait HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")  # its body never comes
            await asyncio.wait_for(registered.wait(), WAIT_S)
            writer.close()
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert seen == ["/wait"]  # and not "/done", whose response was complete

    run(main)


def test_a_client_leaving_mid_body_writes_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """On main each such client wrote an 11-line traceback (the app's ClientDisconnect, logged as an error)."""
    async def main() -> None:
        async with serving(starlette()) as (port, _):
            _, writer = await connect(port)
            writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            await asyncio.sleep(0.1)
            writer.close()
            await asyncio.sleep(0.2)

    with caplog.at_level(logging.INFO, logger="modelyard"):
        run(main)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("disconnected" in r.getMessage() for r in caplog.records)  # counted, on one line


def test_shutdown_closes_idle_connections_and_ends_open_streams_through_their_callback() -> None:
    ended: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        client: Exchange = scope["extensions"][CLIENT_EXTENSION]
        stop = asyncio.get_running_loop().create_future()
        client.on_shutdown(lambda: stop.set_result(None))
        client.start(200, [(b"content-type", b"text/event-stream")])
        client.write(b"data: 1\n\n")
        await stop
        ended.append(scope["path"])
        client.end(b"data: {\"error\": \"shutdown\"}\n\n")

    async def main() -> None:
        async with serving(app, drain_s=0.3) as (port, server):
            idle, _ = await connect(port)
            reader, writer = await connect(port)
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"data: 1\n\n\r\n"), WAIT_S)
            writer.write(b"GET /pipelined HTTP/1.1\r\nHost: x\r\n\r\n")  # waits behind the stream
            await asyncio.sleep(0.05)
            stopping = asyncio.create_task(server.shutdown())
            assert await closed(idle)  # at once, before the drain is over
            rest = await asyncio.wait_for(reader.read(), WAIT_S)
            stream, _, after = rest.partition(b"0\r\n\r\n")
            assert b'data: {"error": "shutdown"}' in stream
            assert after.startswith(b"HTTP/1.1 503") and b'"code":"shutdown"' in after
            await stopping
            assert ended == ["/stream"]

    run(main)


UPGRADE = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n", UPGRADE], ids=["garbage", "upgrade"])
def test_what_is_not_plain_http_is_400_and_closed(request_bytes: bytes) -> None:
    async def main() -> None:
        async with serving(starlette()) as (port, _):
            reader, writer = await connect(port)
            writer.write(request_bytes)
            status, _, body = await response(reader)
            assert status.startswith(b"HTTP/1.1 400") and b'"error"' in body
            assert await closed(reader)
            writer.close()

    run(main)


def test_disconnects_are_logged_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(logging.getLogger("modelyard.test"), interval_s=3600)
    with caplog.at_level(logging.INFO, logger="modelyard.test"):
        for _ in range(1000):
            throttled.note("client_disconnected", "a client disconnected")
        throttled.note("timeout", "a client too slow")
    suffix = " (1 since the last such line; at most one every 3600 s)"
    assert [r.getMessage() for r in caplog.records] == ["a client disconnected" + suffix, "a client too slow" + suffix]
    assert throttled.counts == {"client_disconnected": 999}  # told with the next line, an interval later
