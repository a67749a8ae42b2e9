"""Precise prefix routing in Kubernetes, against a replayed API (tests/gateway/test_discovery.py's KubeReplay, the
recordings tests/data/kube/kv-endpointslices-*): a vLLM model with KV events whose EndpointSlices name the pods'
`kv-events` and `kv-replay` ports, as `modelyard render kubernetes` renders its Service. Three real simulator
processes stand in for the pods, each publishing its KV events as vLLM does (`--kv-events`) on its own loopback
address: the recorded pod IPs are 127.0.0.2-4 (where a cluster's would be 10.x), one port each for HTTP, events
and replay shared by all three as the pods of one Deployment share theirs (the replay rewrites the recorded 8000,
5557 and 5558 to them).

As pods appear, turn not ready (a container restarting in place: its simulator is restarted on the same address),
come back and go away, the subscriptions follow them and a pod's share of the index goes with it; through
`modelyard gateway --kube-api`, a prefix held by a pod, as its events say, is routed there."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.fleet.process import free_port
from modelyard.gateway.discovery import EndpointSliceSource, KubeAPI
from modelyard.routing.endpoints import EndpointTable, ReplicaState
from modelyard.routing.kv_events import KVEventFeed
from modelyard.routing.kv_index import KVIndex
from modelyard.spec.schema import YardSpec
from tests.e2e.test_kubernetes_discovery import Gateway, _answers
from tests.e2e.test_precise_routing import ask
from tests.gateway.test_discovery import (
    A,
    B,
    C,
    KubeReplay,
    async_wait_until,
    recorded_list,
    recorded_watch,
    wait_until,
)

HOSTS = (A, B, C)
START_TIMEOUT_S = 60.0
RECORDED_KV_PORTS = (5557, 5558)
MODEL = {"name": "chat", "engine": "vllm", "model": {"path": "/models/chat"}, "kv_events": True}


def system(topic: str) -> str:
    return f"You are the assistant of the {topic} desk. " + f"Always answer about {topic}, politely and briefly. " * 40


def chat(topic: str, question: str) -> dict[str, Any]:
    return {"model": "chat", "max_tokens": 2, "messages": [{"role": "system", "content": system(topic)},
                                                           {"role": "user", "content": question}]}


def shared_ports(count: int) -> list[int]:
    """`count` ports free on every pod's address."""
    ports: list[int] = []
    for _ in range(200):
        port = free_port(A)
        try:
            for host in HOSTS:
                with closing(socket.socket()) as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no ports free on 127.0.0.2-4")


class Pods:
    """One simulator per recorded pod IP, publishing KV events at the pods' shared ports."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.http, self.events, self.replay = shared_ports(3)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, host: str) -> None:
        log = (self.tmp / f"sim-{host}.log").open("ab")
        self.procs[host] = subprocess.Popen(
            [sys.executable, "-m", "modelyard.simulator", "--host", host, "--port", str(self.http), "--model", "chat",
             "--param", "itl_base_s=0.001", "--kv-events", f"tcp://{host}:{self.events}",
             "--kv-events-replay", f"tcp://{host}:{self.replay}"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(partial(_answers, self.url(host) + "/metrics"), START_TIMEOUT_S, f"the simulator on {host}")

    def stop(self, host: str) -> None:
        proc = self.procs.pop(host)
        proc.kill()
        proc.wait()

    def url(self, host: str) -> str:
        return f"http://{host}:{self.http}"

    def recording(self) -> tuple[list[dict[str, Any]], dict[str, list[bytes]]]:
        others = dict(zip(RECORDED_KV_PORTS, (self.events, self.replay), strict=True))
        return ([recorded_list("kv-endpointslices-list-1000.json", self.http, others)],
                {"1000": recorded_watch("kv-endpointslices-watch-1000.jsonl", self.http, others)})


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    running = Pods(tmp_path)
    try:
        for host in HOSTS:
            running.start(host)
        yield running
    finally:
        for host in list(running.procs):
            running.stop(host)


def followed(feed: KVEventFeed, table: EndpointTable) -> dict[str, int]:
    """The pods a worker's feed subscribes to once it has looked at the table: pod IP -> replica number."""
    feed.sync(table.of("chat"))
    return {s.source.events.split("//")[1].rsplit(":", 1)[0]: s.source.replica for s in feed.subscriptions.values()}


def replica_at(table: EndpointTable, host: str) -> int:
    return next(e.replica for e in table.of("chat") if f"//{host}:" in e.url)


async def warm(client: httpx.AsyncClient, pods: Pods, host: str, feed: KVEventFeed, replica: int) -> None:
    """A prompt sent to the pod directly, until its events reach the feed's index (a SUB socket only gets what is
    sent once it has joined; the next batch's gap would bring a missed one back from the replay socket)."""
    for n in range(20):
        reply = await client.post(pods.url(host) + "/v1/chat/completions", json=chat(host, f"warm up {n}"))
        assert reply.status_code == 200, reply.text
        with contextlib.suppress(AssertionError):
            await async_wait_until(lambda: feed.index.blocks(replica) > 0, 2, f"{host}'s stored blocks")
            return
    raise AssertionError(f"{host}'s stored blocks never reached the index")


async def _subscriptions_follow_the_pods(pods: Pods) -> None:
    lists, watches = pods.recording()
    with KubeReplay(lists, watches) as replay:
        table = EndpointTable()
        source = EndpointSliceSource(YardSpec.model_validate({"version": 1, "models": [MODEL]}), table,
                                     KubeAPI(replay.url, "default"))
        task = asyncio.create_task(source.run())
        # a worker that looks at the table after every change, and one that does not look while B is not ready
        worker, late = KVEventFeed(KVIndex(10_000)), KVEventFeed(KVIndex(10_000))
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                await _scenario(pods, replay, table, worker, late, client)
        finally:
            await worker.close()
            await late.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _next(replay: KubeReplay, table: EndpointTable, check: Any, what: str) -> None:
    replay.send(1)
    await async_wait_until(lambda: check(table), 20, what)


async def _scenario(pods: Pods, replay: KubeReplay, table: EndpointTable, worker: KVEventFeed, late: KVEventFeed,
                    client: httpx.AsyncClient) -> None:
    await async_wait_until(lambda: replay.watching("1000"), 20, "the watch")
    assert followed(worker, table) == {A: 0, B: 1} and followed(late, table) == {A: 0, B: 1}
    first = next(iter(worker.subscriptions.values())).source
    assert (first.events, first.replay) == (f"tcp://{A}:{pods.events}", f"tcp://{A}:{pods.replay}")
    await asyncio.gather(*(s.joined.wait() for feed in (worker, late) for s in feed.subscriptions.values()))
    for host, replica in ((A, 0), (B, 1)):
        await warm(client, pods, host, worker, replica)
        await async_wait_until(lambda r=replica: late.index.blocks(r) > 0, 20, "the late worker's blocks")  # type: ignore[misc]

    # a pod appears
    await _next(replay, table, lambda t: len(t.of("chat")) == 3, "C added")
    assert followed(worker, table) == {A: 0, B: 1, C: 2} and followed(late, table) == {A: 0, B: 1, C: 2}
    await asyncio.gather(*(s.joined.wait() for s in worker.subscriptions.values()))
    await warm(client, pods, C, worker, 2)

    # B's container restarts in place (the same IP): not ready, its simulator restarted, ready again
    b_blocks = late.index.blocks(1)
    await _next(replay, table, lambda t: t.of("chat")[1].state is ReplicaState.STARTING, "B not ready")
    assert followed(worker, table) == {A: 0, C: 2} and worker.index.blocks(1) == 0
    pods.stop(B)
    pods.start(B)
    await _next(replay, table, lambda t: t.of("chat")[1].state is ReplicaState.READY, "B ready again")
    assert late.index.blocks(1) == b_blocks  # what the old container held, to a worker that did not look meanwhile
    stale = late.subscriptions[1]
    assert followed(late, table) == {A: 0, B: 1, C: 2} and late.subscriptions[1] is not stale
    assert late.index.blocks(1) == 0  # the new epoch: forgotten, followed afresh
    assert followed(worker, table) == {A: 0, B: 1, C: 2}
    await asyncio.gather(*(s.joined.wait() for s in worker.subscriptions.values()))
    assert worker.index.blocks(1) == 0  # the restarted engine holds nothing yet
    await warm(client, pods, B, worker, 1)  # ... and what it stores now is followed

    # A's pod goes away, then C's slice is deleted: their subscriptions end and their shares go with them
    await _next(replay, table, lambda t: len(t.of("chat")) == 2, "A gone")
    assert followed(worker, table) == {B: 1, C: 2} and worker.index.blocks(0) == 0
    await _next(replay, table, lambda t: len(t.of("chat")) == 1, "C gone")
    assert followed(worker, table) == {B: 1} and worker.index.blocks(2) == 0 and worker.index.blocks(1) > 0
    assert followed(late, table) == {B: 1} and late.index.blocks(0) == late.index.blocks(2) == 0


def test_the_subscriptions_follow_the_pods_and_a_pod_takes_its_share_when_it_goes(pods: Pods) -> None:
    asyncio.run(_subscriptions_follow_the_pods(pods))


def _held_prefix_lands_on(gateway: Gateway, pods: Pods, host: str, replica: str) -> None:
    warmed = httpx.post(pods.url(host) + "/v1/chat/completions", json=chat(host, "warm up"), timeout=30)
    assert warmed.status_code == 200, warmed.text
    time.sleep(0.5)  # the events reach the worker's subscription within milliseconds (or its join's replay)
    answers = [ask(gateway, chat(host, f"Question {n}: where is my order {n * 7}?")) for n in range(6)]
    assert {r for r, _, _ in answers} == {replica}, answers
    assert all(cached >= 0.8 * prompt for _, prompt, cached in answers), answers


def test_through_the_gateway_a_prefix_goes_to_the_pod_whose_events_hold_it(tmp_path: Path, pods: Pods) -> None:
    lists, watches = pods.recording()
    with KubeReplay(lists, watches) as replay:
        with Gateway(tmp_path, ["--kube-api", replay.url, "--namespace", "default"], models=[MODEL]) as gateway:
            gateway.wait_replicas(2)
            _held_prefix_lands_on(gateway, pods, B, "chat/1")
            replay.send(1)  # C's pod appears: its events are followed too
            gateway.wait_replicas(3)
            _held_prefix_lands_on(gateway, pods, C, "chat/2")


def test_outside_kubernetes_an_external_server_is_followed_at_its_kv_events_addresses(tmp_path: Path,
                                                                                       pods: Pods) -> None:
    remote = {"name": "chat", "engine": "openai", "urls": [pods.url(A), pods.url(B)], "upstream_model": "chat",
              "kv_events": [f"tcp://{h}:{pods.events}" for h in (A, B)],
              "kv_replay": [f"tcp://{h}:{pods.replay}" for h in (A, B)]}
    with Gateway(tmp_path, [], models=[remote]) as gateway:
        gateway.wait_replicas(2)
        _held_prefix_lands_on(gateway, pods, B, "chat/1")
        _held_prefix_lands_on(gateway, pods, A, "chat/0")
