"""The relay's stream (gateway/relay.py `Pipe`) against a real engine connection on loopback and a client that
records its writes: the head goes out with the first chunk from the callback that read it, each read of the
engine is one write, and the last piece goes out with the end of the response."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from modelyard.gateway.relay import Pipe
from modelyard.gateway.upstream import UpstreamPool, request_head


class Client:
    """The client side as the relay sees it (`protocol.Exchange`'s hot-path API), each write recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.head = b""
        self.disconnected = self.write_paused = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.head = b"<%d %s>" % (status, b",".join(value for _, value in headers))

    def on_disconnect(self, callback: object) -> None: ...

    def on_shutdown(self, callback: object) -> None: ...

    def write(self, data: bytes) -> None:  # the held head goes out with the first piece, as Exchange.write does
        self.writes.append(self.head + data)
        self.head = b""

    def end(self, data: bytes = b"") -> None:
        self.writes.append(self.head + data + b"<end>")


def test_the_first_chunk_goes_out_with_the_head_in_the_read_that_brought_it_then_one_write_per_read() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"9\r\ndata: 3\n\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()  # (Python 3.12's wait_closed waits for the server's connections)

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        pool = UpstreamPool()
        target = pool.target(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        try:
            client = Client()
            pipe = Pipe(True, False, cast(Any, client), [(b"x-modelyard-replica", b"r0")])
            conn = await pool.connect(target, 1)
            conn.on_first = pipe.begin
            conn.send(request_head(target, "/v1/chat/completions", {}), b"{}")
            assert await conn.head() == 200
            # written by the connection's callback before this task resumed
            assert pipe.started and client.writes == [b"<200 text/event-stream; charset=utf-8,no-cache,r0>data: 0\n\n"]
            assert await conn.chunk() == b""  # the body goes to the stream now
            while not pipe.finished:
                await pipe.wake
                pipe.wake = asyncio.get_running_loop().create_future()
            assert client.writes[1:] == [b"data: 1\n\ndata: 2\n\n"]  # one read, one write
            pipe.end_response()
            assert client.writes[2:] == [b"data: 3\n\n<end>"]  # read with the answer's end: written with it
            assert pipe.error is None and pipe.sse.events == 4
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 10))
