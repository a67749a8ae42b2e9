"""The gateway's Kubernetes discovery against `KubeReplay`, a stand-in API server on loopback that answers the
EndpointSlice list and watch requests with the recorded answers in tests/data/kube/ (see its README); the
end-to-end test (tests/e2e/test_kubernetes_discovery.py) routes real requests through the same replay."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from modelyard.gateway.discovery import (
    EndpointSliceSource,
    Gone,
    KubeAPI,
    KubeError,
    add_static,
    replicas_of,
)
from modelyard.routing.endpoints import EndpointTable, ReplicaState
from modelyard.spec.schema import YardSpec

DATA = Path(__file__).resolve().parent.parent / "data" / "kube"
SLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
RECORDED_PORT = 8000
A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
_DROP, _END = b"drop", b"end"


def _with_ports(obj: Any, ports: Mapping[int, int]) -> Any:
    if isinstance(obj, dict):
        if obj.get("kind") in (None, "EndpointSlice") and isinstance(obj.get("ports"), list):
            obj["ports"] = [{**p, "port": ports.get(p.get("port"), p.get("port"))} for p in obj["ports"]]
        for value in obj.values():
            _with_ports(value, ports)
    elif isinstance(obj, list):
        for value in obj:
            _with_ports(value, ports)
    return obj


def recorded_list(name: str, port: int = RECORDED_PORT, others: Mapping[int, int] | None = None) -> dict[str, Any]:
    """A recorded answer with the recorded ports (8000; `others`: recorded -> used) replaced."""
    ports = {RECORDED_PORT: port, **(others or {})}
    data: dict[str, Any] = _with_ports(orjson.loads((DATA / name).read_bytes()), ports)
    return data


def recorded_watch(name: str, port: int = RECORDED_PORT, others: Mapping[int, int] | None = None) -> list[bytes]:
    lines = (DATA / name).read_bytes().splitlines()
    ports = {RECORDED_PORT: port, **(others or {})}
    return [orjson.dumps(_with_ports(orjson.loads(line), ports)) + b"\n" for line in lines if line.strip()]


def recorded(port: int = RECORDED_PORT) -> tuple[list[dict[str, Any]], dict[str, list[bytes]]]:
    """The whole recording: the two lists in the order they are asked for, the watches by resourceVersion."""
    lists = [recorded_list("endpointslices-list-1000.json", port), recorded_list("endpointslices-list-2000.json", port)]
    watches = {rv: recorded_watch(f"endpointslices-watch-{rv}.jsonl", port) for rv in ("1000", "1003", "2000")}
    return lists, watches


class _Stream:
    def __init__(self, version: str, lines: list[bytes]) -> None:
        self.version, self.lines = version, lines
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()


class KubeReplay:
    """Answers `GET .../namespaces/NS/endpointslices` as the API server would, from recorded answers: a list
    request gets the next of `lists` (the last one again after that); a watch request from a resourceVersion that
    `watches` has gets that watch's events, one line each time `send` is called, and stays open until `drop`
    (the connection cut mid-stream) or `end` (the server's timeout); a watch from any other version is too old:
    410 Gone. It runs on 127.0.0.1 in a thread of its own, so a test can drive it from a plain function."""

    def __init__(self, lists: list[dict[str, Any]], watches: dict[str, list[bytes]],
                 namespace: str = "default") -> None:
        self.lists, self.watches, self.namespace = lists, watches, namespace
        self.requests: list[dict[str, str]] = []
        self.streams: list[_Stream] = []
        self._listed = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> KubeReplay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in self.streams:
            self._loop.call_soon_threadsafe(stream.queue.put_nowait, _END)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get(SLICES_PATH.format(namespace=self.namespace), self._slices)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def watch_versions(self) -> list[str]:
        return [r.get("resourceVersion", "") for r in self.requests if r.get("watch") == "true"]

    @property
    def list_count(self) -> int:
        return sum(1 for r in self.requests if r.get("watch") != "true")

    def send(self, count: int = 1) -> None:
        """The next `count` events of the open watch go out."""
        stream = self.streams[-1]
        for _ in range(count):
            self._loop.call_soon_threadsafe(stream.queue.put_nowait, stream.lines.pop(0))

    def drop(self) -> None:
        self._loop.call_soon_threadsafe(self.streams[-1].queue.put_nowait, _DROP)

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self.streams[-1].queue.put_nowait, _END)

    def watching(self, version: str) -> bool:
        """A watch from `version` is open."""
        return bool(self.streams) and self.streams[-1].version == version

    async def _slices(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({**request.query, "authorization": request.headers.get("Authorization", "")})
        if request.query.get("watch") != "true":
            body = self.lists[min(self._listed, len(self.lists) - 1)]
            self._listed += 1
            return web.json_response(body, status=int(body["code"]) if body.get("kind") == "Status" else 200)
        version = request.query.get("resourceVersion", "")
        if version not in self.watches:
            return web.Response(body=(DATA / "status-410-expired.json").read_bytes(), status=410,
                                content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        stream = _Stream(version, list(self.watches[version]))
        self.streams.append(stream)
        while True:
            line = await stream.queue.get()
            if line == _END:
                with contextlib.suppress(ConnectionResetError):  # the client may have gone already
                    await response.write_eof()
                return response
            if line == _DROP:
                assert request.transport is not None
                request.transport.abort()  # mid-body: the client sees a cut chunked stream
                raise asyncio.CancelledError
            await response.write(line)


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def async_wait_until(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def spec(*models: dict[str, Any]) -> YardSpec:
    return YardSpec.model_validate({"version": 1, "models": list(models) or [{"name": "chat", "engine": "simulator"}]})


def states(table: EndpointTable, model: str = "chat") -> dict[str, str]:
    return {e.url.split("//")[1].split(":")[0]: e.state.value for e in table.of(model)}


# --- one slice's replicas ----------------------------------------------------------------------------------------

def test_a_slice_gives_each_endpoint_its_url_and_state() -> None:
    endpoint_slice = {
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 8000}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True, "terminating": False}},
            {"addresses": ["10.0.0.2"], "conditions": {}},  # ready nil: the API says read it as true
            {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": False, "terminating": False}},
            {"addresses": ["10.0.0.4"], "conditions": {"ready": False, "serving": True, "terminating": True}},
            {"addresses": [], "conditions": {"ready": True}},
        ]}
    got = [(r.url, r.state) for r in replicas_of(endpoint_slice)]
    assert got == [("http://10.0.0.1:8000", ReplicaState.READY), ("http://10.0.0.2:8000", ReplicaState.READY),
                   ("http://10.0.0.3:8000", ReplicaState.STARTING), ("http://10.0.0.4:8000", ReplicaState.DRAINING)]


def test_the_first_port_ipv6_and_a_slice_without_port() -> None:
    ipv6 = {"addressType": "IPv6", "ports": [{"name": "api", "port": 30000}],
            "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": True}}]}
    assert [r.url for r in replicas_of(ipv6)] == ["http://[fd00::5]:30000"]
    assert replicas_of({"addressType": "IPv4", "ports": None, "endpoints": [{"addresses": ["10.0.0.1"]}]}) == []
    assert replicas_of({"addressType": "IPv4", "endpoints": None}) == []


# --- the table ---------------------------------------------------------------------------------------------------

def _slice(name: str, service: str, *endpoints: tuple[str, dict[str, bool]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}, "resourceVersion": "7"},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8000}],
            "endpoints": [{"addresses": [ip], "conditions": c} for ip, c in endpoints]}


READY, NOT_READY = {"ready": True}, {"ready": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


def test_the_table_follows_the_slices_with_replica_numbers_never_reused() -> None:
    table = EndpointTable()
    yard = spec({"name": "chat", "engine": "simulator"},
                {"name": "ext", "engine": "openai", "urls": ["http://10.9.9.9:8000"], "upstream_model": "big"})
    assert add_static(yard, table) == 1
    source = EndpointSliceSource(yard, table, KubeAPI("http://127.0.0.1:1", "default"))
    assert source.selector == "kubernetes.io/service-name in (modelyard-chat)"  # the external model is not looked up
    source.replace([_slice("s1", "modelyard-chat", ("10.0.0.1", READY), ("10.0.0.2", NOT_READY)),
                    _slice("other", "someone-else", ("10.0.0.7", READY))], "10")
    assert states(table) == {"10.0.0.1": "ready", "10.0.0.2": "starting"}
    first = {e.url: e.replica for e in table.of("chat")}
    # the same address in two slices (the controller moving it): the state that serves wins
    source.event({"type": "ADDED", "object": _slice("s2", "modelyard-chat", ("10.0.0.2", READY))})
    assert states(table) == {"10.0.0.1": "ready", "10.0.0.2": "ready"}
    source.event({"type": "MODIFIED", "object": _slice("s1", "modelyard-chat", ("10.0.0.1", TERMINATING))})
    assert states(table) == {"10.0.0.1": "draining", "10.0.0.2": "ready"}
    assert {e.url: e.replica for e in table.of("chat")} == first  # a state change keeps the replica's number
    source.event({"type": "DELETED", "object": _slice("s1", "modelyard-chat")})
    source.event({"type": "ADDED", "object": _slice("s3", "modelyard-chat", ("10.0.0.1", READY))})
    assert states(table) == {"10.0.0.1": "ready", "10.0.0.2": "ready"}
    back = next(e for e in table.of("chat") if e.url == "http://10.0.0.1:8000")
    assert back.replica == 2  # a replica that left and came back is a new one to the workers
    source.event({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "42"}}})
    assert source.resource_version == "42"
    assert [(e.url, e.upstream_model, e.state) for e in table.of("ext")] == [
        ("http://10.9.9.9:8000", "big", ReplicaState.READY)]  # discovery never touches a static replica


def test_a_dual_stack_pod_is_one_replica_followed_at_its_ipv4_address() -> None:
    table = EndpointTable()
    yard = spec({"name": "chat", "engine": "simulator"})
    source = EndpointSliceSource(yard, table, KubeAPI("http://127.0.0.1:1", "default"))

    def pod_slice(name: str, family: str, address: str, ready: dict[str, bool]) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": "modelyard-chat"}},
                "addressType": family, "ports": [{"name": "http", "port": 8000}],
                "endpoints": [{"addresses": [address], "conditions": ready,
                               "targetRef": {"kind": "Pod", "name": "chat-7d9f", "uid": "u-1"}}]}

    source.replace([pod_slice("s6", "IPv6", "fd00::5", READY), pod_slice("s4", "IPv4", "10.0.0.5", READY)], "3")
    assert [(e.url, e.state) for e in table.of("chat")] == [("http://10.0.0.5:8000", ReplicaState.READY)]
    source.event({"type": "DELETED", "object": pod_slice("s4", "IPv4", "10.0.0.5", READY)})
    assert [e.url for e in table.of("chat")] == ["http://[fd00::5]:8000"]  # an IPv6-only view still serves


def test_an_error_event_raises_gone_for_410() -> None:
    source = EndpointSliceSource(spec(), EndpointTable(), KubeAPI("http://127.0.0.1:1", "default"))
    expired = orjson.loads((DATA / "status-410-expired.json").read_bytes())
    with pytest.raises(Gone):
        source.event({"type": "ERROR", "object": expired})
    with pytest.raises(KubeError) as error:
        source.event({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd is sad"}})
    assert error.value.code == 500 and not isinstance(error.value, Gone)


def test_two_models_cannot_share_a_service() -> None:
    with pytest.raises(ValueError, match="share Service"):
        EndpointSliceSource(spec({"name": "chat", "engine": "simulator"}, {"name": "chat", "engine": "simulator"}),
                            EndpointTable(), KubeAPI("http://127.0.0.1:1", "default"))


# --- configuration -----------------------------------------------------------------------------------------------

def test_in_cluster_config_reads_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("token-1\n")
    (tmp_path / "ca.crt").write_text("not read here")
    (tmp_path / "namespace").write_text("inference\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    api = KubeAPI.in_cluster(account=tmp_path, environ=env)
    assert api == KubeAPI("https://10.96.0.1:443", "inference", tmp_path / "token", tmp_path / "ca.crt")
    assert api.headers()["Authorization"] == "Bearer token-1"
    (tmp_path / "token").write_text("token-2")  # the kubelet rotated it
    assert api.headers()["Authorization"] == "Bearer token-2"
    ipv6 = KubeAPI.in_cluster("models", account=tmp_path, environ={**env, "KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert ipv6 is not None and ipv6.url == "https://[fd00::1]:443" and ipv6.namespace == "models"
    assert KubeAPI.in_cluster(account=tmp_path, environ={}) is None
    assert KubeAPI.in_cluster(account=tmp_path / "absent", environ=env) is None


def test_an_explicit_api_without_a_service_account(tmp_path: Path) -> None:
    api = KubeAPI.at("http://127.0.0.1:8001/", account=tmp_path, environ={"POD_NAMESPACE": "ml"})
    assert api == KubeAPI("http://127.0.0.1:8001", "ml")
    assert "Authorization" not in api.headers() and api.ssl_context() is None


# --- list, watch, resume, 410 ------------------------------------------------------------------------------------

@pytest.fixture
def token(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("sa-token")
    return tmp_path


Steps = Callable[[EndpointTable], Awaitable[None]]


async def _follow(replay: KubeReplay, account: Path, steps: Steps) -> EndpointSliceSource:
    table = EndpointTable()
    source = EndpointSliceSource(spec(), table, KubeAPI.at(replay.url, "default", account=account, environ={}))
    task = asyncio.create_task(source.run())
    try:
        await steps(table)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return source


def test_list_then_watch_resumes_after_a_drop_and_lists_again_after_410(token: Path) -> None:
    lists, watches = recorded()
    with KubeReplay(lists, watches) as replay:
        async def steps(table: EndpointTable) -> None:
            await async_wait_until(lambda: replay.watching("1000"), what="the watch from the list's version")
            assert states(table) == {A: "ready", B: "starting"}
            replay.send(2)  # B ready, a second slice with C
            await async_wait_until(lambda: states(table) == {A: "ready", B: "ready", C: "ready"})
            replay.send(1)  # a bookmark
            replay.drop()
            await async_wait_until(lambda: replay.watching("1003"), what="the watch resumed from the bookmark")
            replay.send(1)  # A terminating
            await async_wait_until(lambda: states(table) == {A: "draining", B: "ready", C: "ready"})
            replay.send(1)  # ERROR 410 Expired: the first slice is deleted while the watch was behind
            await async_wait_until(lambda: replay.watching("2000"), what="the watch from the new list")
            assert states(table) == {C: "ready"}
            replay.send(1)  # the second slice deleted
            await async_wait_until(lambda: states(table) == {})

        source = asyncio.run(_follow(replay, token, steps))
    assert replay.watch_versions == ["1000", "1003", "2000"]
    assert replay.list_count == 2 and source.lists == 2
    for request in replay.requests:
        assert request["labelSelector"] == "kubernetes.io/service-name in (modelyard-chat)"
        assert request["authorization"] == "Bearer sa-token"
    watch = next(r for r in replay.requests if r.get("watch") == "true")
    assert watch["allowWatchBookmarks"] == "true" and int(watch["timeoutSeconds"]) > 0


def test_a_watch_answered_410_lists_again(token: Path) -> None:
    lists, watches = recorded()
    del watches["1003"]  # the version the watch resumes from is no longer kept: the answer is 410 Gone
    with KubeReplay(lists, watches) as replay:
        async def steps(table: EndpointTable) -> None:
            await async_wait_until(lambda: replay.watching("1000"))
            replay.send(3)
            await async_wait_until(lambda: len(table.of("chat")) == 3)
            replay.drop()
            await async_wait_until(lambda: replay.watching("2000"), what="a new list and its watch")
            assert states(table) == {C: "ready"}

        asyncio.run(_follow(replay, token, steps))
    assert replay.watch_versions == ["1000", "1003", "2000"]
    assert replay.list_count == 2


def test_a_watch_the_server_ends_is_resumed_without_a_list(token: Path) -> None:
    lists, watches = recorded()
    watches["1002"] = watches["1003"]
    with KubeReplay(lists, watches) as replay:
        async def steps(table: EndpointTable) -> None:
            await async_wait_until(lambda: replay.watching("1000"))
            replay.send(2)  # no bookmark this time: the last version seen is the last event's
            await async_wait_until(lambda: len(table.of("chat")) == 3)
            replay.end()  # timeoutSeconds reached: the server ends the watch cleanly
            await async_wait_until(lambda: replay.watching("1002"), what="the watch resumed from the last event")
            replay.send(1)
            await async_wait_until(lambda: states(table)[A] == "draining")

        asyncio.run(_follow(replay, token, steps))
    assert replay.list_count == 1


def test_the_table_is_kept_while_the_api_is_away(token: Path) -> None:
    lists, watches = recorded()
    with KubeReplay(lists, watches) as replay:
        async def steps(table: EndpointTable) -> None:
            await async_wait_until(lambda: replay.watching("1000"))
            watches.clear()
            lists.clear()  # every answer now fails: no list to give
            lists.append({"kind": "Status", "code": 500})
            replay.drop()
            await async_wait_until(lambda: len(replay.requests) >= 3, what="a few attempts")
            assert states(table) == {A: "ready", B: "starting"}

        asyncio.run(_follow(replay, token, steps))


# --- KV events ---------------------------------------------------------------------------------------------------

KV_PORTS = [{"name": "http", "port": 8000}, {"name": "kv-events", "port": 5557}, {"name": "kv-replay", "port": 5558}]
KV_MODEL = {"name": "chat", "engine": "vllm", "model": {"path": "/models/chat"}, "kv_events": True,
            "kv_hash_seed": "11"}


def _kv_slice(name: str, *endpoints: tuple[str, dict[str, bool]], ports: list[dict[str, Any]] = KV_PORTS,
              address_type: str = "IPv4") -> dict[str, Any]:
    return {**_slice(name, "modelyard-chat", *endpoints), "ports": ports, "addressType": address_type}


def kv(table: EndpointTable) -> dict[str, tuple[str | None, str | None, int]]:
    return {e.url: (e.kv_events, e.kv_replay, e.kv_epoch) for e in table.of("chat")}


def test_a_slice_names_the_kv_event_ports_of_its_pods() -> None:
    (replica,) = replicas_of(_kv_slice("s1", ("10.0.0.1", READY)))
    assert (replica.address, replica.kv_port, replica.replay_port) == ("10.0.0.1", 5557, 5558)
    (ipv6,) = replicas_of(_kv_slice("s1", ("fd00::5", READY), address_type="IPv6"))
    assert ipv6.kv_port is None  # vLLM's publisher binds `*` on IPv4 only
    (plain,) = replicas_of(_slice("s1", "modelyard-chat", ("10.0.0.1", READY)))
    assert plain.kv_port is None


def test_a_ready_pod_is_followed_at_its_ip_and_a_pod_seen_not_ready_again_gets_a_new_epoch(
        caplog: pytest.LogCaptureFixture) -> None:
    table = EndpointTable()
    source = EndpointSliceSource(spec(KV_MODEL), table, KubeAPI("http://127.0.0.1:1", "default"))
    source.replace([_kv_slice("s1", ("10.0.0.1", READY), ("10.0.0.2", NOT_READY))], "10")
    assert kv(table) == {"http://10.0.0.1:8000": ("tcp://10.0.0.1:5557", "tcp://10.0.0.1:5558", 0),
                         "http://10.0.0.2:8000": (None, None, 0)}  # not ready: its publisher may not be up
    first = table.of("chat")[0]
    assert (first.kv_hash_seed, first.kv_topic, first.tokenize_path) == ("11", "", "/tokenize")
    source.event({"type": "MODIFIED", "object": _kv_slice("s1", ("10.0.0.1", NOT_READY), ("10.0.0.2", READY))})
    assert kv(table) == {"http://10.0.0.1:8000": (None, None, 1), "http://10.0.0.2:8000": ("tcp://10.0.0.2:5557",
                                                                                           "tcp://10.0.0.2:5558", 0)}
    source.event({"type": "MODIFIED", "object": _kv_slice("s1", ("10.0.0.1", READY), ("10.0.0.2", READY))})
    assert kv(table)["http://10.0.0.1:8000"] == ("tcp://10.0.0.1:5557", "tcp://10.0.0.1:5558", 1)
    source.event({"type": "MODIFIED", "object": _kv_slice("s1", ("10.0.0.2", TERMINATING))})
    assert kv(table) == {"http://10.0.0.2:8000": (None, None, 1)}  # 10.0.0.1 gone; 10.0.0.2 draining
    without_replay = [p for p in KV_PORTS if p["name"] != "kv-replay"]
    source.event({"type": "ADDED", "object": _kv_slice("s2", ("10.0.0.3", READY), ports=without_replay)})
    assert kv(table)["http://10.0.0.3:8000"] == ("tcp://10.0.0.3:5557", None, 0)
    with caplog.at_level("WARNING", "modelyard.gateway.discovery"):
        source.event({"type": "ADDED", "object": _slice("s3", "modelyard-chat", ("10.0.0.4", READY))})
        source.event({"type": "ADDED", "object": _slice("s4", "modelyard-chat", ("10.0.0.5", READY))})
    assert kv(table)["http://10.0.0.4:8000"] == (None, None, 0)
    assert sum("no port named kv-events" in r.message for r in caplog.records) == 1  # said once


def test_a_model_without_kv_events_gets_no_addresses_even_where_its_slices_name_the_ports() -> None:
    table = EndpointTable()
    source = EndpointSliceSource(spec({**KV_MODEL, "kv_events": False}), table,
                                 KubeAPI("http://127.0.0.1:1", "default"))
    source.replace([_kv_slice("s1", ("10.0.0.1", READY))], "10")
    assert kv(table) == {"http://10.0.0.1:8000": (None, None, 0)}


def test_an_external_server_with_kv_events_is_followed_at_its_addresses() -> None:
    table = EndpointTable()
    yard = spec({"name": "ext", "engine": "openai", "urls": ["http://10.9.9.8:8000", "http://10.9.9.9:8000"],
                 "kv_events": ["tcp://10.9.9.8:5557", "tcp://10.9.9.9:5557"],
                 "kv_replay": ["tcp://10.9.9.8:5558", "tcp://10.9.9.9:5558"], "kv_hash_seed": "3"})
    assert add_static(yard, table) == 2
    assert [(e.kv_events, e.kv_replay, e.kv_hash_seed, e.tokenize_path) for e in table.of("ext")] == [
        ("tcp://10.9.9.8:5557", "tcp://10.9.9.8:5558", "3", "/tokenize"),
        ("tcp://10.9.9.9:5557", "tcp://10.9.9.9:5558", "3", "/tokenize")]
    plain = EndpointTable()
    add_static(spec({"name": "ext", "engine": "openai", "urls": ["http://10.9.9.8:8000"]}), plain)
    assert [(e.kv_events, e.tokenize_path) for e in plain.of("ext")] == [(None, None)]
