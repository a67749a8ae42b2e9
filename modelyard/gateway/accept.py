"""Accepting new connections in batches, so that a busy gateway still takes new clients in.

libuv, under uvloop, accepts one connection per event-loop iteration (libuv PR #3696, 2022). A gateway that
relays a thousand streams runs only some twenty iterations a second, so it accepted about twenty connections a
second: measured on the 16-core device at 1,024 streams, 618 connections waited in the kernel's accept queue and
their clients got no answer for the whole 20-second level (TTFT p99 19 s), while the connections already accepted
were served. Here each wake-up of the listening socket accepts every waiting connection, up to a batch, and hands
each to the loop as an accepted socket, served by the gateway's HTTP protocol (gateway/protocol.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("modelyard.gateway")
ACCEPT_BATCH = 256
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
RETRY_AFTER_S = 1.0  # out of file descriptors: stop accepting for a while, as asyncio does


class BatchAcceptor:
    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.protocol_factory, self.loop = sock, protocol_factory, loop
        self.accepted = 0
        self._tasks: set[asyncio.Task[object]] = set()
        self._closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    log.error("cannot accept connections (%s); trying again in %.0f s", exc.strerror, RETRY_AFTER_S)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(RETRY_AFTER_S, self._resume)
                    return
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            task: asyncio.Task[object] = self.loop.create_task(
                self.loop.connect_accepted_socket(self.protocol_factory, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stops accepting; the listening socket itself is its owner's to close."""
        if not self._closed:
            self._closed = True
            self.loop.remove_reader(self.sock.fileno())
