"""The gateway worker's own HTTP server through `modelyard up` (a real worker process): bounds before
authentication, and a SIGTERM with streams in flight that ends each one with an SSE error event and records it."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import API_KEY, Cluster
from tests.upstream import Upstream

STREAMS = 4
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


def cluster(tmp_path: Path, upstream: Upstream, drain_s: float = 5.0) -> Cluster:
    model = {"name": "m", "engine": "openai", "urls": [upstream.url], "replicas": 1,
             "timeouts": {"first_byte_s": 5, "between_chunks_s": 10, "total_s": 120}}
    http = {"drain_s": drain_s, "head_timeout_s": 1}
    return Cluster(tmp_path, [model], gateway={"workers": 1, "http": http}).start()


def read_all(sock: socket.socket) -> bytes:
    """Everything until the gateway closes the connection (socket timeout: it did not)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_bounds_hold_before_authentication_and_leaving_mid_body_logs_no_traceback(
        tmp_path: Path, upstream: Upstream) -> None:
    """On main: a 64 KiB header was served (401 after reading it all), a body was read whole before its 413, and a
    client leaving mid-body wrote an 11-line traceback."""
    running = cluster(tmp_path, upstream)
    try:
        big = raw(running.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 65536 + b"\r\n\r\n")
        assert big.startswith(b"HTTP/1.1 431")
        for path in (b"/v1/chat/completions", b"/admin/keys"):  # unauthenticated, a huge declared body
            answer = raw(running.port, b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" % path)
            assert answer.startswith(b"HTTP/1.1 413"), answer
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                         + b"\r\nContent-Length: 1000\r\n\r\n{\"model\": ")
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:  # slowloris: closed
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert read_all(sock).startswith(b"HTTP/1.1 408")
        ok = httpx.post(running.url + "/v1/completions", headers=HEADERS, timeout=30,
                        json={"model": "m", "prompt": "hi", "max_tokens": 2})
        assert ok.status_code == 200
    finally:
        running.stop()
    log = (tmp_path / "state" / "logs" / "modelyard.log").read_text()  # where the workers' lines go
    assert "Traceback" not in log and "Traceback" not in running.output()
    assert "disconnected before its response was complete" in log  # counted, on one line


def test_a_clients_connection_close_is_honored_on_a_stream(tmp_path: Path, upstream: Upstream) -> None:
    """The relay writes the stream itself: the client's `Connection: close` must still end the connection (main
    honored it too, through uvicorn's cycle; this keeps it so)."""
    running = cluster(tmp_path, upstream)
    try:
        body = b'{"model": "m", "prompt": "hi", "max_tokens": 4, "stream": true}'
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (API_KEY.encode(), len(body), body))
            answer = read_all(sock)  # returns only because the gateway closed the connection
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head
        assert answer.endswith(b"0\r\n\r\n") and b"[DONE]" in answer
    finally:
        running.stop()


def test_sigterm_ends_open_streams_with_an_error_event_and_records_them(tmp_path: Path, upstream: Upstream) -> None:
    """On main: streams still open after the fixed 5 s grace were cut with no SSE error, recorded as 200."""
    upstream.mode = "slow_stream"  # 30 s of tokens: longer than the drain
    running = cluster(tmp_path, upstream, drain_s=1.0)
    bodies: list[bytes] = [b""] * STREAMS
    started = threading.Barrier(STREAMS + 1, timeout=30)

    def stream(index: int) -> None:
        body = {"model": "m", "prompt": "hi", "max_tokens": 500, "stream": True}
        with httpx.stream("POST", running.url + "/v1/completions", json=body, headers=HEADERS, timeout=60) as reply:
            chunks = reply.iter_raw()
            bodies[index] = next(chunks)
            started.wait()
            for chunk in chunks:
                bodies[index] += chunk

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    try:
        for thread in threads:
            thread.start()
        started.wait()
        assert running.proc is not None
        running.stop(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
    finally:
        running.stop()
    for body in bodies:
        events = [e for e in body.split(b"\n\n") if e]
        assert b'"code":"shutdown"' in events[-1], events[-3:]
        assert b"[DONE]" not in body
    rows = sqlite3.connect(tmp_path / "state" / "modelyard.db").execute("SELECT error FROM usage").fetchall()
    assert rows == [("shutdown",)] * STREAMS
