"""One id finds a request everywhere: x-request-id from the client (or made by the gateway) in the response, at the
engine, in the usage row and in the access log."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster import API_KEY, Cluster
from tests.upstream import Upstream

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Cluster]:
    model = {"name": "m", "engine": "openai", "urls": [upstream.url]}
    running = Cluster(tmp_path_factory.mktemp("ids"), [model], gateway={"workers": 1, "access_log": True},
                      extra={"store": {"usage_flush_interval_s": 0.1}}).start()
    yield running
    running.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_clients_id_reaches_the_engine_the_store_and_the_log(cluster: Cluster, upstream: Upstream,
                                                               stream: bool) -> None:
    rid = f"req-{'s' if stream else 'n'}-42"
    reply = httpx.post(cluster.url + "/v1/completions", headers={**HEADERS, "x-request-id": rid}, timeout=30,
                       json={"model": "m", "prompt": "hi", "max_tokens": 3, "stream": stream})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == rid
    assert upstream.request_ids[-1] == rid
    db = cluster.tmp / "state" / "modelyard.db"
    deadline = time.monotonic() + 10  # the writer flushes every 0.1 s
    while True:
        rows = sqlite3.connect(db).execute("SELECT request_id, model FROM usage WHERE request_id = ?", (rid,))
        if (found := rows.fetchall()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found == [(rid, "m")]
    log = (cluster.tmp / "state" / "logs" / "modelyard.log").read_text()
    line = next(line for line in log.splitlines() if f'"request_id":"{rid}"' in line)
    assert '"model":"m"' in line and '"status":200' in line and "hi" not in line.split("]: ", 1)[1]


def test_an_id_is_made_when_the_client_sends_none_or_a_bad_one(cluster: Cluster, upstream: Upstream) -> None:
    for headers in (HEADERS, {**HEADERS, "x-request-id": "has spaces and a;"}):
        reply = httpx.post(cluster.url + "/v1/completions", headers=headers, timeout=30,
                           json={"model": "m", "prompt": "hi", "max_tokens": 3})
        assert re.fullmatch(r"[0-9a-f]{24}", reply.headers["x-request-id"])
        assert upstream.request_ids[-1] == reply.headers["x-request-id"]


def test_errors_carry_the_id_too(cluster: Cluster) -> None:
    reply = httpx.post(cluster.url + "/v1/completions", headers={**HEADERS, "x-request-id": "e-1"},
                       json={"model": "nope", "prompt": "hi"})
    assert reply.status_code == 404 and reply.headers["x-request-id"] == "e-1"
