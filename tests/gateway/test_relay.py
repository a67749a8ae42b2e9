"""The relay's pacing of streams under saturation (gateway/relay.py `Pacer`), turn by turn on a real event loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from modelyard.gateway.relay import Pacer, Pipe


class Stream:
    """What the pacer asks of a stream: `hold` (stop reading its engine; False if it is ending) and `unhold`."""

    def __init__(self, name: str, log: list[str], ending: bool = False) -> None:
        self.name, self.log, self.ending, self.held = name, log, ending, False

    def hold(self) -> bool:
        if self.ending:
            return False
        self.held = True
        self.log.append(f"hold {self.name}")
        return True

    def unhold(self) -> None:
        self.held = False
        self.log.append(f"unhold {self.name}")


async def next_turn() -> None:
    await asyncio.sleep(0)  # this task resumes one loop turn later, after the callbacks scheduled before it


def test_past_the_per_turn_bound_streams_wait_and_are_read_again_in_order_a_bound_per_turn() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        pacer = Pacer(per_turn=2)
        streams = [Stream(str(i), log) for i in range(5)]
        for stream in streams:  # five streams relayed in one turn
            pacer.relayed(cast(Pipe, stream))
        log.append("turn")
        await next_turn()
        log.append("turn")
        await next_turn()
        log.append("turn")
        await next_turn()
        assert not pacer.waiting and not any(s.held for s in streams)
        return log

    log = asyncio.run(main())
    assert log == ["hold 2", "hold 3", "hold 4", "turn", "unhold 2", "unhold 3", "turn", "unhold 4", "turn"]


def test_under_the_bound_nothing_waits_and_an_ending_stream_is_not_held() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        pacer = Pacer(per_turn=2)
        for turn in range(3):  # two streams relayed per turn: never more than the bound
            pacer.relayed(cast(Pipe, Stream(f"a{turn}", log)))
            pacer.relayed(cast(Pipe, Stream(f"b{turn}", log)))
            await next_turn()
        pacer.relayed(cast(Pipe, Stream("c", log)))
        pacer.relayed(cast(Pipe, Stream("d", log)))
        pacer.relayed(cast(Any, Stream("ending", log, ending=True)))  # its last piece: nothing left to read
        assert not pacer.waiting
        await next_turn()
        return log

    assert asyncio.run(main()) == []


class Client:
    """The client side of a stream as the relay sees it (`protocol.Exchange`'s hot-path API), recording writes."""

    def __init__(self) -> None:
        self.body = b""
        self.complete = self.disconnected = self.write_paused = False

    def start(self, status: int, headers: object) -> None:
        self.body += b"<%d>" % status

    def on_disconnect(self, callback: object) -> None: ...

    def on_shutdown(self, callback: object) -> None: ...

    def write(self, data: bytes) -> None:
        self.body += data

    def end(self, data: bytes = b"") -> None:
        self.body += data + b"<end>"
        self.complete = True


def test_streams_held_by_the_pacer_are_read_again_and_lose_nothing() -> None:
    """Three engine streams through one pacer that relays one stream per turn: each stream's connection is paused
    while it waits (what it was sent meanwhile stays in the socket) and every event reaches its client in order."""
    from modelyard.gateway.relay import Outcome
    from modelyard.gateway.upstream import UpstreamPool, request_head

    events = 20

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index in range(events):
            event = b"data: %d\n\n" % index
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        pool = UpstreamPool()
        target = pool.target(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        held: list[int] = []

        class Counting(Pacer):
            def relayed(self, pipe: Pipe) -> None:
                super().relayed(pipe)
                held.append(len(self.waiting))

        pacer = Counting(per_turn=1)
        try:
            pipes, clients = [], []
            for _ in range(3):
                conn = await pool.connect(target, 1)
                client = Client()
                pipe = Pipe(Outcome(), True, False, cast(Any, client), pacer, [])
                conn.on_first = pipe.begin
                conn.send(request_head(target, "/v1/completions", {}), b"{}")
                pipes.append(pipe)
                clients.append(client)
            for _ in range(2000):  # bounded: each stream takes ~40 ms
                if all(p.finished for p in pipes):
                    break
                await asyncio.sleep(0.001)
            for pipe in pipes:
                assert pipe.finished and pipe.error is None
                pipe.end_response()
            for client in clients:
                expected = b"".join(b"data: %d\n\n" % i for i in range(events))
                assert client.body.startswith(b"<200>") and client.body.endswith(b"<end>")
                assert client.body[5:-5] == expected
            assert any(held)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 10))
