"""A request's one scope (gateway/scope.py), end to end in `modelyard up`: a client that leaves before its answer
(queued, waiting for the engine, generating a non-streamed answer) gives back its admission slot, aborts the
engine's work, and is recorded as 499; the next client is served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.cluster import API_KEY, Cluster
from tests.gateway.test_app import usage_rows
from tests.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as one:
        yield one


@pytest.fixture
def cluster(tmp_path: Path, upstream: Upstream) -> Iterator[Cluster]:
    # one request at the replica at a time: a slot held by a gone client would keep every later one queued (one
    # worker: each worker admits its share of max_concurrency, so two workers would let two requests through)
    model = {"name": "m", "engine": "openai", "urls": [upstream.url], "replicas": 1,
             "admission": {"max_concurrency": 1, "max_queue": 4, "max_wait_s": 3},
             "timeouts": {"first_byte_s": 30, "between_chunks_s": 30, "total_s": 40}}
    running = Cluster(tmp_path, [model], gateway={"workers": 1}).start()
    yield running
    running.stop()


def send_raw(cluster: Cluster, stream: bool = False) -> socket.socket:
    """A completion request on a raw socket, left unread (the test closes it to leave)."""
    body = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 3, "stream": stream})
    sock = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %b\r\nContent-Length: %d\r\n\r\n"
    sock.sendall(head % (API_KEY.encode(), len(body)) + body)
    return sock


def wait_for(check: object, what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def complete(cluster: Cluster) -> httpx.Response:
    return httpx.post(cluster.url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 3},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_while_the_engine_works_aborts_it_and_frees_its_slot(
        cluster: Cluster, upstream: Upstream, stream: bool) -> None:
    upstream.mode = "hang"
    sock = send_raw(cluster, stream)
    wait_for(lambda: upstream.requests == 1, "the request to reach the engine")
    sock.close()
    wait_for(upstream.aborted.is_set, "the gateway to close the engine's connection")  # the engine stops working
    upstream.mode = "ok"
    reply = complete(cluster)  # the one slot is free again: on main it stayed held, this waited 3 s for a 503
    assert reply.status_code == 200, reply.text
    cluster.stop()
    rows = usage_rows(cluster)
    assert sum(r.requests for r in rows) == 2 and sum(r.errors for r in rows) == 1


def test_a_client_that_leaves_while_queued_never_reaches_the_engine(cluster: Cluster, upstream: Upstream) -> None:
    upstream.mode = "hang"
    first = send_raw(cluster)
    wait_for(lambda: upstream.requests == 1, "the first request to reach the engine")
    queued = send_raw(cluster)  # waits for the one slot
    wait_for(lambda: cluster.metric("modelyard_queue_depth", model="m") == 1, "the second request to be queued")
    queued.close()
    wait_for(lambda: cluster.metric("modelyard_queue_depth", model="m") == 0, "the gone client to leave the queue")
    first.close()
    wait_for(upstream.aborted.is_set, "the first request's engine connection to close")
    upstream.mode = "ok"
    assert complete(cluster).status_code == 200
    # served in order: had the gone client stayed queued, it would have reached the engine before this one
    assert upstream.requests == 2
