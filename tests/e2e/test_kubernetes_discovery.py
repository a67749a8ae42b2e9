"""`modelyard gateway --kube-api URL` against a replayed Kubernetes API (tests/gateway/test_discovery.py's
KubeReplay, the recordings in tests/data/kube/), routing real requests to three real simulator processes behind
the replayed EndpointSlices' addresses (127.0.0.2-4, one port, as pods of one Deployment). As the slices add
replicas, mark them not ready or terminating, lose them to a 410 Gone and a new list, and delete them, routing
follows: each simulator's own request count shows that none was sent to a replica that was not ready or gone,
and a stream that a replica serves when it turns terminating finishes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelyard.fleet.process import free_port
from tests.cluster import API_KEY
from tests.gateway.test_discovery import A, B, C, KubeReplay, recorded, wait_until

SIMULATORS = (A, B, C)
START_TIMEOUT_S = 60.0


def shared_port() -> int:
    """A port free on every simulator's address."""
    for _ in range(50):
        port = free_port(A)
        try:
            for host in SIMULATORS:
                with closing(socket.socket()) as sock:
                    sock.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on 127.0.0.2-4")


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


CHAT = {"name": "chat", "engine": "simulator", "replicas": 2, "routing": "round-robin"}


class Gateway:
    def __init__(self, tmp: Path, args: list[str], models: list[dict[str, Any]] | None = None) -> None:
        self.port = free_port()
        self.spec_path = tmp / "yard.yaml"
        self.spec_path.write_text(yaml.safe_dump({
            "version": 1, "state_dir": str(tmp / "state"),
            "gateway": {"host": "127.0.0.1", "port": self.port, "workers": 1},  # one worker: /health is its table
            "models": models or [CHAT]}))
        self.log_path = tmp / "gateway.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "modelyard", "gateway", "-f", str(self.spec_path), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**env, "MODELYARD_API_KEY": API_KEY})
        self.url = f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise AssertionError(f"modelyard gateway exited {self.proc.returncode}:\n{self.output()}")
        try:
            model: dict[str, Any] = httpx.get(self.url + "/health", timeout=2).json()["models"]["chat"]
            return model
        except (httpx.HTTPError, ValueError, KeyError):
            return {}

    def wait_replicas(self, ready: int, **others: int) -> None:
        def matches() -> bool:
            seen = self.health()
            return bool(seen) and seen["ready"] == ready and all(
                seen.get(state, 0) == count for state, count in {"starting": 0, "draining": 0, **others}.items())

        wait_until(matches, START_TIMEOUT_S, f"{ready} ready and {others}: last {self.health()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Its output printed if the block failed; stopped, and a clean exit checked, whatever happened."""
        if kind is not None:
            print(self.output())
        assert self.stop() == 0, self.output()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def simulators(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Base URLs by address."""
    port = shared_port()
    with ExitStack() as stack:
        for host in SIMULATORS:
            log = stack.enter_context((tmp_path / f"sim-{host}.log").open("wb"))
            proc = subprocess.Popen([sys.executable, "-m", "modelyard.simulator", "--host", host, "--port", str(port),
                                     "--model", "chat", "--param", "itl_base_s=0.005"], stdout=log,
                                    stderr=subprocess.STDOUT)
            stack.callback(_kill, proc)
        urls = {host: f"http://{host}:{port}" for host in SIMULATORS}
        for url in urls.values():
            wait_until(partial(_answers, url + "/metrics"), START_TIMEOUT_S, f"the simulator at {url}")
        yield urls


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def served(urls: dict[str, str]) -> dict[str, int]:
    """Each simulator's finished requests, from its own /metrics."""
    counts = {}
    for host, url in urls.items():
        lines = httpx.get(url + "/metrics", timeout=5).text.splitlines()
        counts[host] = int(sum(float(line.rsplit(" ", 1)[1]) for line in lines
                               if line.startswith("vllm:e2e_request_latency_seconds_count")))
    return counts


def ask(gateway: Gateway, times: int, status: int = 200, model: str = "chat") -> list[str]:
    """`times` requests one after the other; the replicas that answered them."""
    replicas = []
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for n in range(times):
            reply = client.post(gateway.url + "/v1/chat/completions", json={
                "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": f"question {n}"}]})
            assert reply.status_code == status, reply.text
            replicas.append(reply.headers.get("x-modelyard-replica", ""))
    return replicas


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {host: after[host] - before[host] for host in before}


def test_routing_follows_the_endpointslices(tmp_path: Path, simulators: dict[str, str]) -> None:
    port = int(simulators[A].rsplit(":", 1)[1])
    lists, watches = recorded(port)
    with KubeReplay(lists, watches) as replay:
        with Gateway(tmp_path, ["--kube-api", replay.url, "--namespace", "default"]) as gateway:
            _scenario(gateway, replay, simulators)
    assert replay.watch_versions == ["1000", "1003", "2000"]  # resumed from the bookmark, listed again after 410
    assert replay.list_count == 2


def _scenario(gateway: Gateway, replay: KubeReplay, simulators: dict[str, str]) -> None:
    # the list: A ready, B not yet; C unknown
    gateway.wait_replicas(1, starting=1)
    wait_until(lambda: replay.watching("1000"), START_TIMEOUT_S, "the gateway's watch")
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as streaming, \
            streaming.stream("POST", gateway.url + "/v1/chat/completions", json={
                "model": "chat", "max_tokens": 400, "stream": True,
                "messages": [{"role": "user", "content": "a long answer, please"}]}) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # under way on A, the only ready one
        before = served(simulators)
        assert set(ask(gateway, 8)) == {"chat/0"}
        moved = delta(before, served(simulators))
        assert moved[A] >= 8 and moved[B] == 0 and moved[C] == 0, moved

        # watched: B ready, and a second slice with C
        replay.send(2)
        gateway.wait_replicas(3)
        before = served(simulators)
        ask(gateway, 12)
        moved = delta(before, served(simulators))
        assert moved[B] > 0 and moved[C] > 0, moved

        # a bookmark, then the connection drops: the watch resumes from the bookmark's version
        replay.send(1)
        replay.drop()
        wait_until(lambda: replay.watching("1003"), START_TIMEOUT_S, "the watch resumed from 1003")

        # A terminating: it takes no new request, and the stream it serves finishes
        replay.send(1)
        gateway.wait_replicas(2, draining=1)
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest), rest[-3:]
    before = served(simulators)
    ask(gateway, 12)
    moved = delta(before, served(simulators))
    assert moved[A] == 0 and moved[B] > 0 and moved[C] > 0, moved

    # ERROR 410 Expired on the watch: a new list, where the first slice is gone (A and B)
    replay.send(1)
    wait_until(lambda: replay.watching("2000"), START_TIMEOUT_S, "a new list and its watch")
    gateway.wait_replicas(1)
    before = served(simulators)
    assert set(ask(gateway, 8)) == {"chat/2"}
    moved = delta(before, served(simulators))
    assert moved == {A: 0, B: 0, C: 8}, moved

    # the last slice deleted: no replica, an OpenAI-shaped 503 at once, and nothing reaches a simulator
    replay.send(1)
    gateway.wait_replicas(0)
    before = served(simulators)
    ask(gateway, 3, status=503)
    assert delta(before, served(simulators)) == {A: 0, B: 0, C: 0}


def test_outside_kubernetes_an_external_server_is_served_from_its_urls(tmp_path: Path,
                                                                      simulators: dict[str, str]) -> None:
    remote = {"name": "remote", "engine": "openai", "urls": [simulators[A], simulators[B]], "replicas": 2,
              "upstream_model": "chat", "routing": "round-robin"}
    with Gateway(tmp_path, [], models=[remote, CHAT]) as gateway:
        wait_until(lambda: bool(gateway.health()), START_TIMEOUT_S, "the gateway")
        before = served(simulators)
        assert set(ask(gateway, 6, model="remote")) == {"remote/0", "remote/1"}
        assert delta(before, served(simulators)) == {A: 3, B: 3, C: 0}
        ask(gateway, 1, status=503)  # a model whose replicas only Kubernetes would find has none here
    assert "get no replicas here" in gateway.output()
