"""The gateway in `modelyard up`, in front of scriptable upstreams (engine: openai), on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from modelyard.store.base import UsageRow
from modelyard.store.factory import open_store
from tests.cluster import API_KEY, Cluster
from tests.upstream import Upstream


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream() as first, Upstream() as second:
        yield first, second


@pytest.fixture
def cluster(tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> Iterator[Cluster]:
    model = {"name": "m", "engine": "openai", "urls": [u.url for u in upstreams], "replicas": 2,
             "timeouts": {"first_byte_s": 2, "between_chunks_s": 2, "total_s": 5}}
    running = Cluster(tmp_path, [model]).start()
    yield running
    running.stop()


def client_for(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, timeout=30, max_retries=0)


def test_a_503_replica_is_retried_on_the_other(cluster: Cluster, upstreams: tuple[Upstream, Upstream]) -> None:
    upstreams[0].mode = "error503"
    client = client_for(cluster)
    sent = 0
    while upstreams[0].requests == 0 and sent < 30:  # until the router has tried the failing one (ties are random)
        assert client.completions.create(model="m", prompt="hi", max_tokens=3).choices[0].text == "ok"
        sent += 1
    assert upstreams[0].requests >= 1 and upstreams[1].requests == sent  # each answered by the healthy one


def test_all_replicas_failing_gives_a_clean_503(cluster: Cluster, upstreams: tuple[Upstream, Upstream]) -> None:
    for upstream in upstreams:
        upstream.mode = "error503"
    with pytest.raises(openai.InternalServerError):
        client_for(cluster).completions.create(model="m", prompt="hi", max_tokens=3)


def test_a_fault_on_every_replica_is_retried_through_on_replicas_already_tried(
        cluster: Cluster, upstreams: tuple[Upstream, Upstream]) -> None:
    """Each replica fails its next two requests: the fifth attempt, on a replica that failed before, answers."""
    for upstream in upstreams:
        upstream.fail_next = 2
    assert client_for(cluster).completions.create(model="m", prompt="hi", max_tokens=3).choices[0].text == "ok"
    assert sorted(upstream.requests for upstream in upstreams) == [2, 3]


def test_engine_dying_mid_stream_ends_with_an_sse_error(cluster: Cluster,
                                                        upstreams: tuple[Upstream, Upstream]) -> None:
    for upstream in upstreams:
        upstream.mode = "die_mid_stream"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "m", "prompt": "hi", "max_tokens": 8, "stream": True}
    reply = httpx.post(cluster.url + "/v1/completions", json=body, headers=headers, timeout=30)
    assert reply.status_code == 200
    events = [e for e in reply.text.split("\n\n") if e]
    assert events[0].startswith('data: {"id"')
    assert '"error"' in events[-1] and "[DONE]" not in reply.text
    cluster.stop()
    (row,) = usage_rows(cluster)
    assert (row.requests, row.errors) == (1, 1)


def usage_rows(cluster: Cluster) -> list[UsageRow]:
    async def report() -> list[UsageRow]:
        store = await open_store(None, cluster.tmp / "state")
        try:
            return await store.usage_report("model", since=0)
        finally:
            await store.close()

    return asyncio.run(report())


def test_hung_engine_times_out_within_the_bound(cluster: Cluster, upstreams: tuple[Upstream, Upstream]) -> None:
    for upstream in upstreams:
        upstream.mode = "hang"
    with pytest.raises(openai.APIStatusError) as info:
        client_for(cluster).completions.create(model="m", prompt="hi", max_tokens=3)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
    ejected = sum(cluster.metric("modelyard_replica_ejections_total", model="m", replica=str(i)) for i in range(2))
    assert ejected >= 1
    for upstream in upstreams:  # the engines recover: active probes bring the ejected replicas back
        upstream.mode = "ok"
    served_by: set[str] = set()
    deadline = time.monotonic() + 30
    while served_by != {"m/0", "m/1"} and time.monotonic() < deadline:
        reply = httpx.post(cluster.url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 2},
                           headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        if reply.status_code == 200:
            served_by.add(reply.headers["x-modelyard-replica"])
        time.sleep(0.2)
    assert served_by == {"m/0", "m/1"}


def test_unknown_route_is_openai_shaped(cluster: Cluster) -> None:
    reply = httpx.get(cluster.url + "/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_client_disconnect_aborts_a_silent_upstream_at_once(tmp_path: Path,
                                                            upstreams: tuple[Upstream, Upstream]) -> None:
    """The engine sends nothing after its first chunk (a long tool call, a stalled batch): the client's hang-up
    still closes its connection at once, not when the between-chunks timeout (60 s here) runs out."""
    model = {"name": "m", "engine": "openai", "urls": [u.url for u in upstreams], "replicas": 2,
             "timeouts": {"first_byte_s": 5, "between_chunks_s": 60, "total_s": 120}}
    running = Cluster(tmp_path, [model]).start()
    try:
        hang_up_after_first_bytes(running, upstreams, "stall_stream")
        assert any(u.aborted.wait(10) for u in upstreams), "the engine's connection stayed open for a client that left"
    finally:
        running.stop()


def test_client_disconnect_aborts_the_upstream_request(cluster: Cluster,
                                                       upstreams: tuple[Upstream, Upstream]) -> None:
    hang_up_after_first_bytes(cluster, upstreams, "slow_stream")
    assert any(u.aborted.wait(10) for u in upstreams), "the engine kept generating for a client that left"


def hang_up_after_first_bytes(cluster: Cluster, upstreams: tuple[Upstream, Upstream], mode: str) -> None:
    """A streamed completion from upstreams in `mode`, whose client hangs up after the first bytes."""
    for upstream in upstreams:
        upstream.mode = mode
    body = {"model": "m", "prompt": "hi", "max_tokens": 500, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", cluster.url + "/v1/completions", json=body, headers=headers, timeout=30) as reply:
        for _ in reply.iter_raw():
            break
