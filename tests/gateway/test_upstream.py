"""The gateway's client to the engines (gateway/upstream.py) and the relay's direct writes (gateway/relay.py),
against real servers on loopback: raw asyncio servers that answer exactly what each test needs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from modelyard.gateway.app import stale_connection
from modelyard.gateway.upstream import (
    ConnectFailed,
    Connection,
    StaleConnection,
    Target,
    UpstreamError,
    UpstreamPool,
    request_head,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


async def ask(pool: UpstreamPool, target: Target, body: bytes = b"{}") -> Connection:
    """A connection (pooled or new) with one POST /v1/completions sent on it."""
    conn = await pool.connect(target, 1)
    conn.send(request_head(target, "/v1/completions", {}), body)
    return conn


async def attached(conn: Connection) -> list[bytes]:
    """The pieces that reach a sink attached now, once the body has ended without an error."""
    got: list[bytes] = []
    ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    conn.attach(got.append, ended.set_result)
    assert await ended is None
    return got


def run(handler: Handler, test: Callable[[UpstreamPool, Target], Awaitable[None]]) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:  # a handler that returned has nothing more to send (and 3.12's wait_closed waits for this)
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool()
        try:
            await asyncio.wait_for(test(pool, pool.target(f"http://127.0.0.1:{port}")), 10)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_request_is_written_once_and_the_connection_reused() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(OK)
        writer.close()

    async def test(pool: UpstreamPool, target: Target) -> None:
        head = request_head(target, "/v1/completions", {"Authorization": "Bearer k"})
        for _ in range(3):
            conn = await pool.connect(target, 1)
            conn.send(head, b'{"a":1}')
            assert await conn.head() == 200
            assert await conn.read() == b"{}"
            assert conn.header(b"content-type") == b"application/json"
            conn.release()
        assert pool.opened == 1 and pool.idle() == 1

    run(handler, test)
    assert len(seen) == 3
    assert seen[0].startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b"Authorization: Bearer k\r\n" in seen[0] and seen[0].endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


def test_a_base_url_path_prefixes_the_request_path() -> None:
    target = Target.parse("https://api.example.com:8443/openai/")
    assert (target.host, target.port, target.tls) == ("api.example.com", 8443, True)
    assert request_head(target, "/v1/chat/completions", {}).startswith(b"POST /openai/v1/chat/completions HTTP/1.1")
    with pytest.raises(ValueError):
        request_head(target, "/v1/x", {"X-Evil": "a\r\nHost: b"})


def test_a_chunked_stream_reaches_the_sink_piece_by_piece() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index in range(3):
            event = b"data: %d\n\n" % index
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await reader.read()  # the connection stays open: keep-alive

    async def test(pool: UpstreamPool, target: Target) -> None:
        conn = await pool.connect(target, 1)
        conn.send(request_head(target, "/v1/completions", {}), b"{}")
        assert await conn.head() == 200
        assert await conn.chunk() == b"data: 0\n\n"
        assert await attached(conn) == [b"data: 1\n\n", b"data: 2\n\n"]
        conn.release()
        assert pool.idle() == 1

    run(handler, test)


def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello ")
        await writer.drain()
        writer.write(b"world")
        writer.close()

    async def test(pool: UpstreamPool, target: Target) -> None:
        conn = await pool.connect(target, 1)
        conn.send(request_head(target, "/v1/completions", {}), b"{}")
        assert await conn.head() == 200
        assert await conn.read() == b"hello world"
        conn.release()
        assert pool.idle() == 0  # not kept: the engine closes it

    run(handler, test)


def test_a_closed_pooled_connection_is_stale_but_a_refused_one_is_a_down_replica() -> None:
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await read_request(reader)
        if answered == 0:
            answered += 1
            writer.write(OK)
            await writer.drain()
            await read_request(reader)  # the second request on the kept connection: closed without an answer
        writer.transport.abort()

    async def test(pool: UpstreamPool, target: Target) -> None:
        conn = await ask(pool, target)
        assert await conn.read() == b"{}"
        conn.release()
        conn = await ask(pool, target)
        assert conn.reused
        with pytest.raises(StaleConnection) as stale:
            await conn.head()
        assert stale_connection(stale.value)
        conn.close()
        conn = await ask(pool, target)  # a new connection that the server drops: not stale, failed
        with pytest.raises(UpstreamError) as failed:
            await conn.head()
        assert not stale_connection(failed.value)

        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed = pool.target(f"http://127.0.0.1:{sock.getsockname()[1]}")
        with pytest.raises(ConnectFailed) as refused:
            await pool.connect(closed, 1)
        assert not stale_connection(refused.value) and not stale_connection(TimeoutError())

    run(handler, test)


def test_an_engine_that_dies_mid_stream_ends_the_sink_with_an_error_and_garbage_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        if b"garbage" in body:
            writer.write(b"SMTP READY\r\n\r\n")
            await writer.drain()
            await reader.read()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async def test(pool: UpstreamPool, target: Target) -> None:
        conn = await ask(pool, target)
        assert await conn.chunk() == b"data: 0\n\n"
        ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        conn.attach(lambda chunk: None, ended.set_result)
        assert isinstance(await ended, UpstreamError)
        conn.close()
        conn = await ask(pool, target, b'"garbage"')
        with pytest.raises(UpstreamError, match="not valid HTTP"):
            await conn.head()

    run(handler, test)


def test_on_first_attaches_in_the_read_of_a_200_answers_first_bytes_and_not_for_other_answers() -> None:
    """A stream's relay starts the client's response in the callback that reads the engine's first chunk (before
    the request's task runs again); `chunk()` then says the body goes to the sink. A 503 keeps the buffer: it is
    answered (or retried) by the task."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if b"busy" in body:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"9\r\ndata: 1\n\n\r\n0\r\n\r\n")

    async def test(pool: UpstreamPool, target: Target) -> None:
        got: list[bytes] = []
        ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        task_ran: list[bool] = []

        def on_first(conn: Connection) -> None:
            got.append(b"<head:%d>" % conn.status)
            task_ran.append(False)
            conn.attach(got.append, ended.set_result)

        conn = await pool.connect(target, 1)
        conn.on_first = on_first
        conn.send(request_head(target, "/v1/completions", {}), b"{}")
        assert await conn.head() == 200
        assert got == [b"<head:200>", b"data: 0\n\n"]  # before this task resumed
        assert await conn.chunk() == b""
        assert await ended is None
        assert got[2:] == [b"data: 1\n\n"]
        conn.release()
        conn = await pool.connect(target, 1)
        assert conn.reused and conn.on_first is None  # a pooled connection forgets the last request's hook
        conn.on_first = on_first
        conn.send(request_head(target, "/v1/completions", {}), b'"busy"')
        assert await conn.head() == 503
        assert await conn.read() == b"busy"
        assert len(task_ran) == 1  # not called for the 503
        conn.release()

    run(handler, test)


def test_what_one_read_brings_reaches_the_sink_as_one_piece() -> None:
    """Several HTTP chunks in one read are handed to an attached sink joined (the relay writes them to the client
    as one HTTP chunk); the pieces read with the answer's end come before `ended`."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"".join(b"9\r\ndata: %d\n\n\r\n" % i for i in (1, 2, 3)))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"9\r\ndata: 4\n\n\r\n9\r\ndata: 5\n\n\r\n0\r\n\r\n")
        await reader.read()

    async def test(pool: UpstreamPool, target: Target) -> None:
        conn = await ask(pool, target)
        assert await conn.chunk() == b"data: 0\n\n"
        assert await attached(conn) == [b"data: 1\n\ndata: 2\n\ndata: 3\n\n", b"data: 4\n\ndata: 5\n\n"]
        conn.release()

    run(handler, test)
