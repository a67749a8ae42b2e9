"""Where `modelyard gateway` learns its replicas: in a Kubernetes cluster, from the EndpointSlices of each model's
Service (listed, then watched); an external server (`engine: openai`) from its `urls:`, as `modelyard up` does.

`EndpointSliceSource` is the one writer of the replicas' lifecycle (which exist, their URL, their state) in that
process, as the supervisor is in `modelyard up`: the gateway workers get its table through the same feed
(routing/feed.py); the ejections they decide and their in-flight counts stay theirs. An endpoint whose
`conditions.ready` is true (or absent: the API says to read nil as true) is READY; one that is `terminating` is
DRAINING (no new requests; the streams it serves finish); any other is STARTING; one no slice holds any more is
removed. While the API cannot be reached the last known replicas stay, and the workers' passive ejection takes a
dead one out of routing.

A model whose engine publishes KV events (vLLM with `kv_events: true`, rendered by deploy/kube_engines.py) has two
more named ports in its slices (spec/names.py KV_EVENTS_PORT_NAME, KV_REPLAY_PORT_NAME): a READY replica's endpoint
gets `tcp://<pod IP>:<port>` for both (the adapter's `kv_events_at`, with its hash seed and topic), which the
workers' KV-event subscriptions connect to (routing/kv_events.py, private addresses only: pod IPs are). A replica
that is not READY has none, and one seen not ready again after being ready gets a new `kv_epoch`: its container
may have restarted in place, at the same IP, so what it held is forgotten and its events are followed afresh
(a worker that did not look in between still sees the epoch change). A pod that goes away takes its share with it.
IPv6 slices give no event addresses: vLLM's publisher binds `*` on IPv4 only.

The watch follows the API's rules (kubernetes.io/docs/reference/using-api/api-concepts/): list, then watch from
the list's resourceVersion with bookmarks; a watch that ends or drops resumes from the last resourceVersion seen
(an event's or a bookmark's); 410 Gone, as the watch's status or as an ERROR event, means that version is no
longer kept: list again. aiohttp speaks to the REST API directly (two GETs): the async clients' watch helpers
either cannot ask for bookmarks (lightkube) or have broken on them (kubernetes-asyncio).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from modelyard.engines import EngineAdapter, get_engine
from modelyard.engines.base import KVEvents
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.spec.names import KV_EVENTS_PORT_NAME, KV_REPLAY_PORT_NAME, service_name
from modelyard.spec.schema import AnyModel, YardSpec

log = logging.getLogger("modelyard.gateway.discovery")
SLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
SERVICE_LABEL = "kubernetes.io/service-name"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LIST_PAGE = 500
WATCH_TIMEOUT_S = 300  # the API server ends each watch after this; it is resumed at once
READ_SLACK_S = 30.0  # no byte for timeoutSeconds + this (bookmarks come every minute or so): the connection is dead
MAX_OBJECT_BYTES = 16 * 1024 * 1024  # one watch event is one line: a slice of 1000 endpoints is well under this
RETRY_INITIAL_S, RETRY_MAX_S = 0.2, 30.0
# when one address is in two slices (the controller moving it), the state that lets it serve wins
_PRECEDENCE = {ReplicaState.READY: 0, ReplicaState.STARTING: 1, ReplicaState.DRAINING: 2}


class KubeError(Exception):
    """The Kubernetes API answered with an error Status (or something that is not its JSON)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Kubernetes API: {code}: {message}")
        self.code = code


class Gone(KubeError):
    """410: the resourceVersion asked for is older than what the API server keeps."""


@dataclass(frozen=True)
class KubeAPI:
    """How to reach the API server: its URL, the namespace of the models' Services, the service account's token
    (read again for every request: the kubelet rotates it) and the CA that signed the server's certificate."""

    url: str
    namespace: str
    token_file: Path | None = None
    ca_file: Path | None = None

    @classmethod
    def in_cluster(cls, namespace: str | None = None, account: Path = SERVICE_ACCOUNT,
                   environ: Mapping[str, str] = os.environ) -> KubeAPI | None:
        """The pod's own API server (KUBERNETES_SERVICE_HOST/PORT and the mounted service account), or None
        outside a cluster."""
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port or not (account / "token").is_file():
            return None
        host = f"[{host}]" if ":" in host else host
        ca = account / "ca.crt"
        return cls(f"https://{host}:{port}", namespace or _namespace(account, environ), account / "token",
                   ca if ca.is_file() else None)

    @classmethod
    def at(cls, url: str, namespace: str | None = None, account: Path = SERVICE_ACCOUNT,
           environ: Mapping[str, str] = os.environ) -> KubeAPI:
        """An API server named by URL (`--kube-api`); the service account's token and CA are used if mounted."""
        token, ca = account / "token", account / "ca.crt"
        return cls(url.rstrip("/"), namespace or _namespace(account, environ), token if token.is_file() else None,
                   ca if ca.is_file() else None)

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        return headers

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


def _namespace(account: Path, environ: Mapping[str, str]) -> str:
    """POD_NAMESPACE (the downward API), else the service account's namespace, else "default"."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    path = account / "namespace"
    return path.read_text().strip() if path.is_file() else "default"


@dataclass(frozen=True)
class SliceReplica:
    url: str
    state: ReplicaState
    address: str = ""  # the pod's IP
    kv_port: int | None = None  # its KV events' ports (IPv4 slices only)
    replay_port: int | None = None
    pod: str = ""  # the endpoint's targetRef (its pod's uid, else name): a dual-stack pod is in two slices
    ipv6: bool = False


def replicas_of(endpoint_slice: Mapping[str, Any]) -> list[SliceReplica]:
    """The replicas one EndpointSlice holds: `http://<first address>:<port>`, the port named http or else the
    first one, and the ports named for KV events; a slice without a port number serves nothing here."""
    ports = [p for p in endpoint_slice.get("ports") or () if p.get("port")]
    port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else None)
    if port is None:
        return []
    ipv6 = endpoint_slice.get("addressType") == "IPv6"
    named = {} if ipv6 else {str(p.get("name")): int(p["port"]) for p in ports}
    out = []
    for item in endpoint_slice.get("endpoints") or ():
        addresses = item.get("addresses") or ()
        if not addresses:
            continue
        host = f"[{addresses[0]}]" if ipv6 else addresses[0]
        target = item.get("targetRef") or {}
        pod = str(target.get("uid") or target.get("name") or "") if target.get("kind", "Pod") == "Pod" else ""
        out.append(SliceReplica(f"http://{host}:{port['port']}", _state(item.get("conditions") or {}),
                                str(addresses[0]), named.get(KV_EVENTS_PORT_NAME), named.get(KV_REPLAY_PORT_NAME),
                                pod, ipv6))
    return out


def pod_kv_events(engine: EngineAdapter, model: AnyModel, replica: SliceReplica) -> KVEvents | None:
    """Where a READY replica's KV events are, seen from the gateway; None when it is not ready or has none."""
    if replica.kv_port is None or replica.state is not ReplicaState.READY:
        return None
    events = engine.kv_events_at(model, replica.address, replica.kv_port, replica.replay_port or 0)
    return events if events is None or replica.replay_port else replace(events, replay=None)


def set_kv_events(endpoint: Endpoint, events: KVEvents | None) -> None:
    endpoint.kv_events = events.endpoint if events else None
    endpoint.kv_replay = events.replay if events else None
    endpoint.kv_topic = events.topic if events else ""
    endpoint.kv_hash_seed = events.hash_seed if events else None


def _state(conditions: Mapping[str, Any]) -> ReplicaState:
    if conditions.get("terminating"):
        return ReplicaState.DRAINING
    return ReplicaState.STARTING if conditions.get("ready") is False else ReplicaState.READY


def discovered_models(spec: YardSpec) -> list[AnyModel]:
    """The models whose replicas run as pods (every engine that modelyard launches), found by discovery."""
    return [m for m in spec.models if get_engine(m.engine).runs_here]


def add_static(spec: YardSpec, table: EndpointTable) -> int:
    """The external servers' replicas (`engine: openai`, `urls:`), READY from the start, with their `kv_events:`
    addresses when given: the gateway's passive ejection takes one that fails out of routing for a while, and it
    comes back when that ends. Returns how many."""
    added = 0
    for model in spec.models:
        engine = get_engine(model.engine)
        for index in range(model.max_replicas):
            url = engine.external_url(model, index)
            if url is None:
                break
            endpoint = Endpoint(model=model.name, replica=index, url=url, state=ReplicaState.READY,
                                upstream_model=engine.upstream_model(model), headers=engine.headers(model),
                                tokenize_path=engine.tokenizer(model))
            set_kv_events(endpoint, engine.kv_events(model, "", index))  # its `kv_events:` addresses, if given
            table.add(endpoint)
            added += 1
    return added


class EndpointSliceSource:
    """Keeps `table` equal to the EndpointSlices of the models' Services (spec/names.py `service_name`)."""

    def __init__(self, spec: YardSpec, table: EndpointTable, api: KubeAPI) -> None:
        self.table, self.api = table, api
        self.models: dict[str, AnyModel] = {}
        for model in discovered_models(spec):
            service = service_name(model.name)
            if service in self.models:
                raise ValueError(f"models {self.models[service].name!r} and {model.name!r} share Service {service}")
            self.models[service] = model
        self.slices: dict[str, tuple[str, list[SliceReplica]]] = {}  # by slice name: its model, its replicas
        self.resource_version: str | None = None
        self.synced = asyncio.Event()  # the first list is in the table
        self.lists = 0
        self.events = 0  # watch events applied (bookmarks included)
        self._next_replica = dict.fromkeys((m.name for m in self.models.values()), 0)
        self._told_no_kv_ports: set[str] = set()

    @property
    def selector(self) -> str:
        return f"{SERVICE_LABEL} in ({','.join(sorted(self.models))})"

    def replace(self, items: list[Mapping[str, Any]], resource_version: str) -> None:
        """A list's answer: every slice, as of `resource_version`."""
        self.slices = {}
        for item in items:
            self._put(item)
        self.resource_version = resource_version
        self.sync()

    def event(self, event: Mapping[str, Any]) -> None:
        """One watch event; an ERROR raises (Gone for 410)."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 500)
            raise (Gone if code == 410 else KubeError)(code, str(obj.get("message", obj.get("reason", ""))))
        self.events += 1
        if kind in ("ADDED", "MODIFIED"):
            self._put(obj)
            self.sync()
        elif kind == "DELETED":
            self.slices.pop(str(obj.get("metadata", {}).get("name")), None)
            self.sync()
        version = obj.get("metadata", {}).get("resourceVersion")
        if version:  # a BOOKMARK carries nothing else
            self.resource_version = str(version)

    def _put(self, endpoint_slice: Mapping[str, Any]) -> None:
        metadata = endpoint_slice.get("metadata") or {}
        model = self.models.get(str((metadata.get("labels") or {}).get(SERVICE_LABEL)))
        name = str(metadata.get("name"))
        if model is None:
            self.slices.pop(name, None)
            return
        self.slices[name] = (model.name, replicas_of(endpoint_slice))

    def sync(self) -> None:
        """The table's replicas of each discovered model become the slices' ones: new ones are added (a new replica
        number each, never reused), changed states are set, those no slice holds are removed."""
        wanted: dict[str, dict[str, SliceReplica]] = {m.name: {} for m in self.models.values()}
        for model_name, replicas in self.slices.values():
            seen = wanted[model_name]
            for replica in replicas:  # one replica per pod: a dual-stack pod is followed at its IPv4 address
                key = replica.pod or replica.url
                known = seen.get(key)
                rank = (replica.ipv6, _PRECEDENCE[replica.state])
                if known is None or rank < (known.ipv6, _PRECEDENCE[known.state]):
                    seen[key] = replica
        for model in self.models.values():
            self._sync_model(model, {r.url: r for r in wanted[model.name].values()})

    def _sync_model(self, model: AnyModel, wanted: dict[str, SliceReplica]) -> None:
        current = {e.url: e for e in self.table.of(model.name)}
        for url, endpoint in current.items():
            if url not in wanted:
                self.table.remove(endpoint)
                log.info("replica %s (%s): gone", endpoint.id, url)
        engine = get_engine(model.engine)
        for url, replica in wanted.items():
            state = replica.state
            found = current.get(url)
            if found is None:
                index = self._next_replica[model.name]
                self._next_replica[model.name] = index + 1
                found = Endpoint(model=model.name, replica=index, url=url, state=state,
                                 upstream_model=engine.upstream_model(model), headers=engine.headers(model),
                                 tokenize_path=engine.tokenizer(model))
                self.table.add(found)
                log.info("replica %s (%s): %s", found.id, url, state.value)
            elif found.state is not state:
                if found.state is ReplicaState.READY:
                    found.kv_epoch += 1  # it may restart in place: what it holds is not known any more
                found.state = state
                log.info("replica %s (%s): %s", found.id, url, state.value)
            set_kv_events(found, pod_kv_events(engine, model, replica))
            if replica.kv_port is None and engine.publishes_kv_events(model):
                self._no_kv_ports(model.name, replica)

    def _no_kv_ports(self, model: str, replica: SliceReplica) -> None:
        if model not in self._told_no_kv_ports:
            self._told_no_kv_ports.add(model)
            log.warning("%s publishes KV events but its slices give %s no port named %s (an IPv6 slice, or a "
                        "Service rendered before them): routed without its events", model, replica.url,
                        KV_EVENTS_PORT_NAME)

    async def run(self) -> None:
        """Lists and watches until cancelled; an error is logged and retried after a delay that doubles while
        nothing comes through."""
        delay = RETRY_INITIAL_S
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + READ_SLACK_S)
        connector = aiohttp.TCPConnector(ssl=self.api.ssl_context() or False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         read_bufsize=MAX_OBJECT_BYTES) as session:
            while True:
                events = self.events
                try:
                    if self.resource_version is None:
                        await self._list(session)
                    await self._watch(session)  # it ended as the server ends watches: resume from where it was
                    delay = RETRY_INITIAL_S
                    if self.events == events:
                        await asyncio.sleep(RETRY_INITIAL_S)  # one that ends at once, again and again, never spins
                    continue
                except Gone as exc:
                    log.info("watch: %s; listing again", exc)
                    self.resource_version = None
                    continue
                except (aiohttp.ClientError, OSError, TimeoutError, KubeError, ValueError, KeyError, TypeError) as exc:
                    if isinstance(exc, KubeError):
                        self.resource_version = None  # an answer a watch should not get: start again from a list
                    if self.events != events:
                        delay = RETRY_INITIAL_S  # a watch that served events and then dropped
                    log.warning("Kubernetes API %s: %s: %s; again in %.1fs", self.api.url, type(exc).__name__,
                                exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _list(self, session: aiohttp.ClientSession) -> None:
        items: list[Mapping[str, Any]] = []
        params = {"labelSelector": self.selector, "limit": str(LIST_PAGE)}
        while True:
            body = await self._get(session, params)
            items.extend(body.get("items") or ())
            metadata = body.get("metadata") or {}
            if not metadata.get("continue"):
                break
            params = {**params, "continue": str(metadata["continue"])}
        self.lists += 1
        self.replace(items, str(metadata.get("resourceVersion") or ""))
        log.info("listed %d EndpointSlice(s) at resourceVersion %s", len(items), self.resource_version)
        self.synced.set()

    async def _get(self, session: aiohttp.ClientSession, params: dict[str, str]) -> dict[str, Any]:
        async with session.get(self._url, params=params, headers=self.api.headers()) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise _error(resp.status, body)
            data: dict[str, Any] = orjson.loads(body)
            return data

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        """One watch request from the last resourceVersion, until the server ends it; a dropped connection raises,
        and the next request resumes from the last version seen."""
        params = {"labelSelector": self.selector, "watch": "true", "allowWatchBookmarks": "true",
                  "resourceVersion": self.resource_version or "", "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        async with session.get(self._url, params=params, headers=self.api.headers()) as resp:
            if resp.status != 200:
                raise _error(resp.status, await resp.read())
            async for line in resp.content:
                if line.strip():
                    self.event(orjson.loads(line))

    @property
    def _url(self) -> str:
        return self.api.url + SLICES_PATH.format(namespace=self.api.namespace)


def _error(status: int, body: bytes) -> KubeError:
    """The API's error answer, a Status object when it is one."""
    message = body[:200].decode(errors="replace")
    try:
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or parsed.get("reason") or message)
    except orjson.JSONDecodeError:
        pass
    return (Gone if status == 410 else KubeError)(status, message)
