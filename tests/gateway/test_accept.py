from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from modelyard.gateway.accept import BatchAcceptor

CLIENTS = 200


class Hello(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"hi")  # type: ignore[attr-defined]  # uvloop's transports are not asyncio.Transport


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


async def _waiting_connections_taken_in_a_few_loop_turns() -> None:
    loop = asyncio.get_running_loop()
    listener = _listener()
    clients = []
    acceptor = None
    try:
        for _ in range(CLIENTS):  # all wait in the kernel's accept queue before the acceptor starts
            client = socket.create_connection(listener.getsockname(), timeout=5)
            clients.append(client)
        acceptor = BatchAcceptor(listener, Hello, loop)
        for _ in range(5):  # one connection per loop turn (libuv's own accept) would take 200 turns
            await asyncio.sleep(0)
        assert acceptor.accepted == CLIENTS
        await asyncio.sleep(0.05)
        for client in clients:  # each one is served by the protocol
            assert client.recv(2) == b"hi"
    finally:
        if acceptor is not None:
            acceptor.close()
        for client in clients:
            client.close()
        listener.close()


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"])
def test_every_waiting_connection_is_accepted_on_one_wake_up(loop_factory: object) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:  # type: ignore[arg-type]
        runner.run(_waiting_connections_taken_in_a_few_loop_turns())


def test_a_closed_acceptor_takes_no_more_connections() -> None:
    async def scenario() -> None:
        listener = _listener()
        acceptor = BatchAcceptor(listener, Hello, asyncio.get_running_loop())
        acceptor.close()
        client = socket.create_connection(listener.getsockname(), timeout=5)
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            assert acceptor.accepted == 0
        finally:
            client.close()
            listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
