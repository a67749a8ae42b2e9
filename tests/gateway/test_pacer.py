"""The relay's pacing of streams under saturation (gateway/relay.py `Pacer`): turn by turn on a real event loop
with a clock the test moves, and end to end with real engine connections on loopback."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from modelyard.gateway.relay import MIN_QUOTA, Pacer, Pipe
from modelyard.gateway.upstream import UpstreamPool, request_head
from tests.gateway.test_relay import Client


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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


def test_streams_relayed_past_the_turns_budget_wait_and_are_let_back_oldest_first_as_many_as_fitted() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        clock = Clock()
        pacer = Pacer(budget_s=0.002, clock=clock)
        within = [Stream(f"in{i}", log) for i in range(MIN_QUOTA + 2)]
        late = [Stream(f"late{i}", log) for i in range(2 * MIN_QUOTA + 5)]
        for stream in within:  # relayed inside the turn's first 2 ms
            pacer.relayed(cast(Pipe, stream))
            clock.now += 0.0001
        clock.now = 0.003
        for stream in late:  # relayed after the budget ran out: each waits
            pacer.relayed(cast(Pipe, stream))
        log.append("turn")
        await next_turn()  # as many let back as were relayed within the budget, oldest first
        log.append("turn")
        await next_turn()  # nothing relayed meanwhile: the same number again
        log.append("turn")
        await next_turn()
        assert not pacer.line and not any(s.held for s in late) and not any(s.held for s in within)
        return log

    log = asyncio.run(main())
    n = MIN_QUOTA + 2
    late = [f"late{i}" for i in range(2 * MIN_QUOTA + 5)]
    assert log == ([f"hold {name}" for name in late] + ["turn"] + [f"unhold {name}" for name in late[:n]] + ["turn"]
                   + [f"unhold {name}" for name in late[n:2 * n]] + ["turn"]
                   + [f"unhold {name}" for name in late[2 * n:]])


def test_a_stream_that_waited_the_longest_hold_is_let_back_whatever_the_quota() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        clock = Clock()
        pacer = Pacer(budget_s=0.002, max_hold_s=0.05, clock=clock)
        pacer.relayed(cast(Pipe, Stream("first", log)))  # the turn's clock starts at 0; one stream fits: quota 8
        clock.now = 0.003
        for i in range(MIN_QUOTA + 3):  # held at 3 ms
            pacer.relayed(cast(Pipe, Stream(f"a{i}", log)))
        clock.now = 0.004
        for i in range(MIN_QUOTA + 3):  # held at 4 ms
            pacer.relayed(cast(Pipe, Stream(f"b{i}", log)))
        clock.now = 0.0535  # at the turn's end, the a's waited 50.5 ms, the b's 49.5
        log.append("turn")
        await next_turn()
        return log[:]  # (the b's are let back in the next turns)

    log = asyncio.run(main())
    held = [f"hold a{i}" for i in range(MIN_QUOTA + 3)] + [f"hold b{i}" for i in range(MIN_QUOTA + 3)]
    assert log == held + ["turn"] + [f"unhold a{i}" for i in range(MIN_QUOTA + 3)]


def test_within_the_budget_nothing_waits_and_each_turn_has_its_own_clock_and_an_ending_stream_is_not_held() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        clock = Clock()
        pacer = Pacer(budget_s=0.002, clock=clock)
        for turn in range(3):  # 1.5 ms of relaying per turn, turns far apart in time: never past the budget
            clock.now = turn * 1.0
            for i in range(4):
                pacer.relayed(cast(Pipe, Stream(f"{turn}.{i}", log)))
                clock.now += 0.0005
            await next_turn()
        clock.now += 1.0
        pacer.relayed(cast(Pipe, Stream("first", log)))
        clock.now += 0.01
        pacer.relayed(cast(Any, Stream("ending", log, ending=True)))  # its last piece: nothing left to read
        assert not pacer.line
        await next_turn()
        return log

    assert asyncio.run(main()) == []


def test_streams_held_by_the_pacer_are_read_again_and_lose_nothing() -> None:
    """Three engine streams through a pacer whose budget every second relay overruns: each held stream's connection
    is paused while it waits (what its engine sent meanwhile stays in the socket) and every event reaches its
    client, in order."""
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
        writer.close()  # (Python 3.12's wait_closed waits for the server's connections)

    class Slow(Clock):
        def __call__(self) -> float:  # every reading of the clock is 1.5 ms later: the second relay is past 2 ms
            self.now += 0.0015
            return self.now

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        pool = UpstreamPool()
        target = pool.target(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        held: list[int] = []

        class Counting(Pacer):
            def relayed(self, pipe: Pipe) -> None:
                super().relayed(pipe)
                held.append(len(self.line))
                if pipe.held:
                    assert pipe.conn is not None and pipe.conn.paused

        pacer = Counting(budget_s=0.002, clock=Slow())
        try:
            pipes, clients = [], []
            for _ in range(3):
                conn = await pool.connect(target, 1)
                client = Client()
                pipe = Pipe(True, False, cast(Any, client), [], pacer)
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
                body = b"".join(client.writes)
                head = body[:body.index(b">") + 1]
                assert head.startswith(b"<200 ") and body.endswith(b"<end>")
                assert body[len(head):-5] == expected
            assert any(held)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_stream_paused_by_its_client_and_held_by_the_pacer_is_read_again_only_when_both_let_it() -> None:
    class Conn:
        complete = False

        def __init__(self) -> None:
            self.paused = False

        def pause(self) -> None:
            self.paused = True

        def resume(self) -> None:
            self.paused = False

    async def main() -> None:
        pipe = Pipe(True, False, cast(Any, Client()), [])
        conn = Conn()
        pipe.conn = cast(Any, conn)
        assert pipe.hold() and conn.paused
        pipe.pause()  # the client's socket is full too
        pipe.unhold()
        assert conn.paused  # still the client's
        pipe.resume()
        assert not conn.paused
        assert pipe.hold()
        pipe.pause()
        pipe.resume()  # the client drained, but the pacer's line still holds it
        assert conn.paused
        pipe.unhold()
        assert not conn.paused

    asyncio.run(main())
