from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from modelyard.engines import EngineAdapter, get_engine
from modelyard.gateway import validate
from modelyard.gateway.admin import AdminApi
from modelyard.gateway.admission import AdmissionQueue
from modelyard.gateway.auth import KeyRing, authorization, cache_salt
from modelyard.gateway.disagg import Disaggregation
from modelyard.gateway.errors import openai_error, openai_shaped
from modelyard.gateway.failover import (
    BROKEN_STREAM,
    MAX_ATTEMPTS,
    OutlierDetector,
    RetryBudget,
    backoff_s,
    replica_unwell,
)
from modelyard.gateway.health import health_body, model_health
from modelyard.gateway.limits import Limiter, LocalLimiter
from modelyard.gateway.prompt_count import PromptCounts, counts_tokens
from modelyard.gateway.protocol import CLIENT_EXTENSION
from modelyard.gateway.relay import UPSTREAM_ERRORS, Outcome, Pacer, Pipe, UpstreamStream
from modelyard.gateway.request import (
    GENERATION_PATHS,
    MAX_BODY_BYTES,
    REQUEST_ID_HEADER,
    STREAMED_PATHS,
    Call,
    read_body,
    read_headers,
)
from modelyard.gateway.scope import ClientWatch, ended_by
from modelyard.gateway.slo import RecentLatency
from modelyard.gateway.tenancy import Tenancy
from modelyard.gateway.upstream import Connection, StaleConnection, UpstreamPool, request_head
from modelyard.gateway.usage import UsageWriter, charge, parse_usage, texts
from modelyard.local_tokenizer import load_tokenizers
from modelyard.observability.metrics import GatewayMetrics
from modelyard.observability.recent import RecentTraffic, rejection_kind
from modelyard.routing.contracts import SESSION_HEADER, RouteRequest
from modelyard.routing.endpoints import Endpoint, EndpointTable
from modelyard.routing.pipeline import Router
from modelyard.routing.scrape import MetricsScraper
from modelyard.spec.roles import DECODE
from modelyard.spec.schema import BaseModelSpec, YardSpec
from modelyard.store.base import KeyRecord, Store, UsageRecord

log = logging.getLogger("modelyard.gateway")
access = logging.getLogger("modelyard.access")  # gateway.access_log: one JSON line per request
HOLD_POLL_S = 0.05


def per_model(spec: YardSpec) -> tuple[dict[str, EngineAdapter], dict[str, frozenset[str]], dict[str, float]]:
    """By model: its engine's adapter, the gateway paths it serves, how long a request waits for a replica."""
    engines = {m.name: get_engine(m.engine) for m in spec.models}
    return (engines, {m.name: engines[m.name].endpoints(m) for m in spec.models},
            {m.name: hold_s(spec, m) for m in spec.models})


def hold_s(spec: YardSpec, model: BaseModelSpec) -> float:
    """How long a request for a model with no ready replica waits for one: an autoscaled model that may go to zero
    waits its cold start, a pool member its wake; any other model's request is answered 503 at once."""
    pool = spec.pool_of(model.name)
    if pool is not None:
        return pool.wake_timeout_s
    scaling = model.scaling
    return scaling.cold_start_timeout_s if scaling is not None and scaling.min == 0 else 0.0


def stale_connection(exc: BaseException) -> bool:
    """A pooled connection that the engine had closed (worth one more try on the same replica); a refused or
    failed connect is a down replica, retried elsewhere at once."""
    return isinstance(exc, StaleConnection)


class Gateway:
    """The OpenAI-compatible front: keys and limits, admission, routing to a ready replica, relay, usage."""

    def __init__(self, spec: YardSpec, table: EndpointTable, keys: KeyRing, store: Store | None = None,
                 limiter: Limiter | None = None, metrics: GatewayMetrics | None = None,
                 admin_key: str | None = None, workers: int = 1) -> None:
        self.spec, self.table, self.store = spec, table, store
        self.workers = workers  # gateway processes sharing the port: each admits its share of a model's capacity
        self.metrics = metrics or GatewayMetrics()
        self.tokenizers = load_tokenizers(spec)  # by model, those loaded here (`tokenizer: local`)
        self.router = Router(spec, table, self.metrics.routing, processes=workers, tokenizers=self.tokenizers)
        self.prompt_counts = PromptCounts()  # exact prompt counts for keys with token limits
        self.engines, self.serves, self.holds = per_model(spec)
        self.scraper = MetricsScraper(table, {name: engine.metrics for name, engine in self.engines.items()})
        self.limiter = limiter or LocalLimiter()
        self.queues = {m.name: AdmissionQueue(m.name, self._capacity(m), m.admission.max_queue,
                                              m.admission.max_wait_s) for m in spec.models}
        self.tenancy = Tenancy(keys, store, self.limiter, self.queues, self.metrics)
        self.retry_budget = RetryBudget()
        self.outliers = OutlierDetector(on_eject=self._ejected)
        self.disagg = Disaggregation(self)  # models with roles: the prefill leg, then `_relay` (gateway/disagg.py)
        self.writer = (UsageWriter(store, flush_interval_s=spec.store.usage_flush_interval_s,
                                   batch_size=spec.store.usage_batch_size, on_flushed=self.limiter.commit_budget,
                                   retention_s=spec.store.usage_retention_days * 86400.0)
                       if store is not None and spec.store.record_usage else None)
        self.admin = AdminApi(store, admin_key)
        self.created = int(time.time())
        # the control plane's view (fleet/reconciler.py, through the parent's feed): by model, its desired replicas
        # and strategy; how long a request may wait for a replica to start or wake (0: it is answered 503 at once)
        self.fleet: dict[str, dict[str, Any]] = {}
        self.holding = dict.fromkeys(self.holds, 0)  # requests waiting for a replica, now
        self.arrivals = dict.fromkeys(self.holds, 0)  # requests for each model since start (activity, to the parent)
        self.latency = {m.name: RecentLatency() for m in spec.models if m.slo is not None}
        self.recent = RecentTraffic(self.metrics.multiprocess_dir)  # the status page's last minutes (/ui)
        self._session: aiohttp.ClientSession | None = None  # the scraper's; requests go through `self.upstream`
        self.upstream = UpstreamPool()
        self.pacer = Pacer()  # the streams' share of a saturated worker's loop turns (gateway/relay.py)
        self._tasks: set[asyncio.Task[None]] = set()
        self._heads: dict[tuple[str, str], tuple[dict[str, str], bytes]] = {}  # by endpoint id and path
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def reconfigure(self, spec: YardSpec, ring: KeyRing | None = None) -> None:
        """A new revision applied in place (`modelyard apply`): models, routing, admission, keys. A request in
        flight keeps what it holds (its model's spec, its admission slot); a model's queue, and its waiters, stay."""
        routing_changed = spec.routing != self.spec.routing or [(m.name, m.routing, m.roles) for m in spec.models] != [
            (m.name, m.routing, m.roles) for m in self.spec.models]
        tokenizers_changed = [(m.name, m.tokenizer, m.tokenizer_path) for m in spec.models] != [
            (m.name, m.tokenizer, m.tokenizer_path) for m in self.spec.models]
        if tokenizers_changed:
            self.tokenizers, self.prompt_counts = load_tokenizers(spec), PromptCounts()
        self.spec = spec
        if routing_changed or tokenizers_changed:
            self.router = Router(spec, self.table, self.metrics.routing, processes=self.workers,
                                 tokenizers=self.tokenizers)
        self.engines, self.serves, self.holds = per_model(spec)
        self.scraper.names = {name: engine.metrics for name, engine in self.engines.items()}
        for m in spec.models:
            self.holding.setdefault(m.name, 0)
            self.arrivals.setdefault(m.name, 0)
            if m.slo is not None:
                self.latency.setdefault(m.name, RecentLatency())
            queue = self.queues.get(m.name)
            if queue is None:  # the dict is the tenancy's too: changed in place
                self.queues[m.name] = AdmissionQueue(m.name, self._capacity(m), m.admission.max_queue,
                                                     m.admission.max_wait_s)
            else:
                queue.max_queue, queue.max_wait_s = m.admission.max_queue, m.admission.max_wait_s
                queue.set_capacity(self._capacity(m, len(self.table.ready(m.name))))
        if ring is not None:
            self.tenancy.ring = ring

    def _capacity(self, model: BaseModelSpec, ready: int = 0) -> int:
        """Requests let through to the replicas at once: the spec's bound, else ready replicas x their slots."""
        if model.admission.max_concurrency is not None:
            return -(-model.admission.max_concurrency // self.workers)
        slots = self.engines[model.name].slots(model)
        if model.roles is not None:  # a request holds a decode replica's slot for its life, a prefill one's briefly
            ready = sum(e.role == DECODE for e in self.table.ready(model.name)) if ready else model.roles.decode
        return max(1, -(-(ready or model.min_replicas or 1) * slots // self.workers))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())  # engines set no cookies
        if self.writer is not None:
            self.writer.start()
        self.scraper.start(self._session)
        try:
            yield
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.writer is not None:
                await self.writer.close()  # on SIGTERM too: nothing recorded is lost on a clean stop
            await self.scraper.stop()
            await self.router.close()
            await self._session.close()
            self.upstream.close()

    async def models(self, request: Request) -> Response:
        key = await self.tenancy.identify(authorization(request.scope["headers"]))
        if isinstance(key, Response):
            return key
        data = [{"id": m.name, "object": "model", "created": self.created, "owned_by": "modelyard",
                 "task": self.engines[m.name].task(m).value} for m in self.spec.models if key.allows(m.name)]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def health(self, request: Request) -> Response:
        now = time.monotonic()
        body, ok = health_body({m.name: model_health(self.table, m.name, self.fleet.get(m.name, {}), m.min_replicas,
                                                     now) for m in self.spec.models})
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    async def generate(self, request: Request) -> Response:
        return await self.handle(request.scope, request.receive)

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        """A generation request, read straight from the ASGI scope (no Starlette Request: this is the hot path)."""
        authorization, session, request_id = read_headers(scope)
        key = await self.tenancy.identify(authorization)
        if isinstance(key, Response):
            return key
        body = await read_body(receive)
        if len(body) > MAX_BODY_BYTES:
            return openai_error(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return openai_error(400, "the request body is not valid JSON", "invalid_json")
        if not isinstance(payload, dict):
            return openai_error(400, "the request body must be a JSON object", "invalid_json")
        path = GENERATION_PATHS[scope["path"]]
        wrong = validate.problem(path, payload, body)
        if wrong is not None:
            return openai_error(400, wrong.message, wrong.code, wrong.param)
        model_name = payload.get("model")
        if not isinstance(model_name, str) or not model_name:
            return openai_error(400, "you must provide a model parameter", "missing_model", "model")
        model = self.spec.model(model_name)
        if model is None:
            return openai_error(404, f"The model '{model_name}' does not exist", "model_not_found", "model")
        if path not in self.serves[model_name]:
            return self._unsupported(model, path)
        stream = payload.get("stream") is True and path in STREAMED_PATHS
        call = Call(path, body, payload, model, stream, None,
                    RouteRequest.of(model_name, payload, {SESSION_HEADER: session} if session else None),
                    arrived=time.perf_counter(), request_id=request_id,
                    client=scope.get("extensions", {}).get(CLIENT_EXTENSION))
        watch = call.watch = ClientWatch(scope, receive)  # from here on, the request holds (or waits for) something
        try:
            return await self._serve(call, key, len(body))
        except asyncio.CancelledError:
            ended = watch.absorb()
            if ended is None:
                raise
            self._abandoned(call, key.name, *ended)
            return openai_error(ended[0], f"the request ended before its answer ({ended[1]})", ended[1])
        except Exception:
            self._abandoned(call, key.name, 500, "internal_error")
            raise
        finally:
            watch.stop()

    async def _serve(self, call: Call, key: KeyRecord, body_size: int) -> Response:
        """A checked request: a ready replica (held for one while the control plane starts or wakes it), its key's
        limits and its model's admission slot, then the relay."""
        model, model_name, payload = call.model, call.model.name, call.payload
        self.arrivals[model_name] += 1
        ready = len(self.table.ready(model_name)) or await self._hold(model_name)
        if not ready:
            self.metrics.requests.labels(model_name, key.name, "503").inc()
            self.recent.reject(model_name, "no_ready_replica")
            held = f" (none started within {self.holds[model_name]:g}s)" if self.holds[model_name] else ""
            return openai_error(503, f"No replica of model '{model_name}' is ready{held}", "no_ready_replica",
                                headers={"Retry-After": "2"})
        if model.admission.max_concurrency is None:
            self.queues[model_name].set_capacity(self._capacity(model, ready))
        exact = (await self.prompt_counts.count(call.route, model, self.router, self.engines[model_name], self.table)
                 if counts_tokens(key) else None)  # a key with token limits reserves the prompt's real count
        ticket = await self.tenancy.admit(key, model_name, payload, body_size, generates=call.path in STREAMED_PATHS,
                                          prompt_tokens=exact)
        if isinstance(ticket, Response):
            self.metrics.requests.labels(model_name, key.name, str(ticket.status_code)).inc()
            self.recent.reject(model_name, rejection_kind(ticket.status_code))
            return ticket
        if call.path in self.engines[model_name].cache_salt_paths:  # per key: no probing another's prefix cache
            payload = call.payload = {**payload, "cache_salt": cache_salt(key.name)}
            call.body = orjson.dumps(payload)
        call.ticket = ticket
        if call.stream:
            options = payload.get("stream_options")
            call.keep_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not call.keep_usage:  # ask the engine for usage; the relay drops it from the client's stream
                call.payload = {**payload, "stream_options": {**(options or {}), "include_usage": True}}
                call.body = orjson.dumps(call.payload)
        return await (self.disagg.serve(call) if self.disagg.applies(call) else self.relay(call))

    def _abandoned(self, call: Call, key: str, status: int, error: str) -> None:
        """A request that ended before its answer did (its client left, or the gateway failed): recorded, and what
        it held given back, unless the relay has done so already."""
        if call.ticket is None:  # it held nothing yet
            self.metrics.requests.labels(call.model.name, key, str(status)).inc()
        elif not call.recorded:
            self.record(call, Outcome(status=status, error=error, started=call.arrived))

    async def _hold(self, model: str) -> int:
        """A model scaled to zero or asleep: the request waits while the control plane starts or wakes a replica
        (it sees the wait in the load this worker reports); the ready replicas then, 0 if none came in time."""
        hold = self.holds[model]
        if not hold:
            return 0
        self.holding[model] += 1
        try:
            deadline = time.monotonic() + hold
            while not (ready := len(self.table.ready(model))) and time.monotonic() < deadline:
                await asyncio.sleep(HOLD_POLL_S)
            return ready
        finally:
            self.holding[model] -= 1

    def _unsupported(self, model: BaseModelSpec, path: str) -> Response:
        """A request for an endpoint the model does not serve: the client's mistake, answered here (never sent to
        an engine, so it cannot count against a replica)."""
        task = self.engines[model.name].task(model)
        served = ", ".join(sorted(self.serves[model.name]))
        return openai_error(400, f"The model '{model.name}' is a {task.value} model: it serves {served}, not {path}",
                            "model_does_not_support_endpoint", "model")

    # --- the relay and its parts, which gateway/disagg.py's prefill leg uses as well ---
    async def relay(self, call: Call) -> Response:
        """The request to a replica and its answer to the client: attempts, retries, failover and the record."""
        tried: list[Endpoint] = []
        stale_retried = timed_out = False
        outcome = Outcome(started=call.relay_started) if call.relay_started else Outcome()
        last_error = "no ready replica"
        model = call.model.name
        await self.router.prepare(call.route)
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                if not self.may_retry(model):
                    last_error += "; retry budget exhausted"
                    break
            try:
                if attempt:
                    await asyncio.sleep(backoff_s(attempt))
                endpoint = self._next(call, tried)
                if endpoint is None:
                    break
                if attempt:
                    self.metrics.retries.labels(model).inc()
                tried.append(endpoint)
                data = call.body
                if endpoint.upstream_model and endpoint.upstream_model != model:
                    data = orjson.dumps({**call.payload, "model": endpoint.upstream_model})
                self.take(endpoint, model)
                try:
                    upstream, first = await self.send_request(endpoint, call, data, outcome.started)
                except UPSTREAM_ERRORS as exc:
                    self.release(endpoint, model)
                    last_error = f"replica {endpoint.id} failed: {type(exc).__name__}"
                    if stale_connection(exc) and not stale_retried:
                        stale_retried = True  # a pooled connection the engine had closed: once more, same replica
                        tried.pop()
                        continue
                    timed_out = isinstance(exc, TimeoutError)
                    self.failed(endpoint, hung=timed_out)
                    continue
                except BaseException:  # not the engine's failure (a cancelled request, a bad header): count it back
                    self.release(endpoint, model)
                    raise
            finally:
                if attempt:
                    self.retry_budget.retried(model)
            if replica_unwell(upstream.status):
                self.failed(endpoint)
                if attempt + 1 < MAX_ATTEMPTS:
                    upstream.close()
                    self.release(endpoint, model)
                    last_error = f"replica {endpoint.id} answered {upstream.status}"
                    continue
            elif not call.stream or upstream.status != 200:  # a stream is judged at its end (`_respond`)
                self.outliers.success(endpoint, self.table.of(model))  # an answer about the request too
            return await self._respond(upstream, first, endpoint, call, outcome)
        if timed_out:  # the last replica tried did not answer within the model's timeouts
            outcome.status, outcome.error = 504, "timeout"
            self.record(call, outcome)
            return openai_error(504, f"Model '{model}' did not answer in time ({last_error})", "upstream_timeout")
        outcome.status, outcome.error = 503, "no_replica"
        self.record(call, outcome)
        return openai_error(503, f"No replica of model '{model}' could serve the request ({last_error})",
                            "no_ready_replica", headers={"Retry-After": "1"})

    def _next(self, call: Call, tried: list[Endpoint]) -> Endpoint | None:
        """The replica for the next attempt: one not tried yet; else, when every ready one failed, one again (not
        the last to fail, where there is another), since an intermittent fault says little about the next try."""
        endpoint = self.router.pick(call.route, exclude=tried)
        if endpoint is None and tried:
            endpoint = self.router.pick(call.route, exclude=tried[-1:]) or self.router.pick(call.route)
        return endpoint

    def failed(self, endpoint: Endpoint, hung: bool = False) -> None:
        """A replica fault (gateway/failover.py's classification said so): counted towards its ejection."""
        self.outliers.failure(endpoint, hung=hung, peers=self.table.of(endpoint.model))

    def _ejected(self, endpoint: Endpoint) -> None:
        self.metrics.ejections.labels(endpoint.model, str(endpoint.replica)).inc()

    async def send_request(self, endpoint: Endpoint, call: Call, data: bytes,
                           started: float) -> tuple[Connection, bytes]:
        """Sends the request and, for a stream, waits for its first chunk: up to here a failure can be retried."""
        timeouts = call.model.timeouts
        target = self.upstream.target(endpoint.url)
        cached = self._heads.get((endpoint.id, call.path))
        if cached is None or cached[0] is not endpoint.headers:
            cached = self._heads[(endpoint.id, call.path)] = (endpoint.headers,
                                                              request_head(target, call.path, endpoint.headers))
        # one total across the attempts (a retry does not start it again); a stream's between-chunks and total
        # timeouts once it answers are the relay's (relay.Watchdog)
        left = max(0.001, timeouts.total_s - (time.perf_counter() - started))
        wait = min(timeouts.first_byte_s, left) if call.stream else left
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        conn = await self.upstream.connect(target, min(timeouts.connect_s, wait))
        timer = loop.call_at(deadline, conn.expire)  # one timer, cheaper than a timeout context per request
        if call.stream and call.client is not None:  # its response starts in the callback that reads the first chunk
            call.pipe = Pipe(call.keep_usage, call.model.store_text, call.client,
                             [(b"x-modelyard-replica", endpoint.id.encode()), (REQUEST_ID_HEADER, call.request_id)],
                             self.pacer)
            conn.on_first = call.pipe.begin
        try:
            conn.send(cached[1], data, b"X-Request-Id: %b\r\n" % call.request_id)
            status = await conn.head()
            first = await conn.chunk() if call.stream and status == 200 else b""
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
        return conn, first

    async def _respond(self, upstream: Connection, first: bytes, endpoint: Endpoint, call: Call,
                       outcome: Outcome) -> Response:
        model = call.model.name

        def finish(done: Outcome) -> None:
            streamed = call.stream and upstream.status == 200
            if streamed and done.error in BROKEN_STREAM:  # the replica broke it off or went silent
                self.failed(endpoint)
            elif streamed and done.error is None:
                self.outliers.success(endpoint, self.table.of(model))
            self.release(endpoint, model)
            self.router.finished(call.route, endpoint)
            self.record(call, done)

        outcome.status, outcome.replica = upstream.status, endpoint.id
        outcome.first_byte = call.pipe.began if call.stream and call.pipe and call.pipe.began else time.perf_counter()
        if call.stream and call.pipe is not None and upstream.status == 200:
            return UpstreamStream(upstream, call.pipe, first, call.model.timeouts, outcome, finish)  # type: ignore[return-value]
        try:
            async with asyncio.timeout(max(0.0, call.model.timeouts.total_s - (time.perf_counter() - outcome.started))):
                content = first + await upstream.read()  # (a stream served by another server than ours)
        except UPSTREAM_ERRORS as exc:
            upstream.close()
            outcome.status, outcome.error = 502, type(exc).__name__
            finish(outcome)
            return openai_error(502, f"replica {endpoint.id} failed while answering ({type(exc).__name__})",
                                "upstream_error")
        except asyncio.CancelledError:  # the client left, or shutdown (scope.py): closing aborts the engine's work
            upstream.close()
            outcome.status, outcome.error = ended_by((call.watch.reason if call.watch else "") or "cancelled")
            finish(outcome)
            raise
        upstream.release()
        status, engine = upstream.status, self.engines[model]
        if status == 200:
            content = engine.answer_body(call.path, content)  # the API's shape, where the engine's differs
        else:  # an engine that says 500 for the client's mistake: its adapter knows
            status = outcome.status = engine.answer_status(status, content)
            content = openai_shaped(status, content)  # the SDKs read {"error": ...}, not an engine's own shape
        outcome.usage = content if status == 200 else b""
        if call.model.store_text:
            outcome.body = content
        finish(outcome)
        media = (upstream.header(b"content-type") or b"application/json").decode("latin-1") if status == 200 \
            else "application/json"
        return Response(content, status_code=status, media_type=media,
                        headers={"x-modelyard-replica": endpoint.id})

    def child(self, metric: Any, *labels: str) -> Any:
        """A metric's labelled child, looked up once (prometheus_client's `labels` takes a lock each time)."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def may_retry(self, model: str) -> bool:
        """A place in the retry budget (give it back with `retry_budget.retried`), against the model's requests
        in progress here."""
        return self.retry_budget.try_retry(model, sum(e.in_flight for e in self.table.of(model)))

    def take(self, endpoint: Endpoint, model: str) -> None:
        """A request in flight on `endpoint` (given back with `release`)."""
        endpoint.in_flight += 1
        self.child(self.metrics.in_flight, model).inc()

    def release(self, endpoint: Endpoint, model: str) -> None:
        endpoint.in_flight -= 1
        self.child(self.metrics.in_flight, model).dec()

    def record(self, call: Call, outcome: Outcome) -> None:
        """Metrics now; the key's limits and the usage store off the request's path. Once per request."""
        if call.recorded or call.ticket is None:
            return
        call.recorded = True
        now = time.perf_counter()
        model, key = call.model.name, call.ticket.key.name
        status = "error" if outcome.error and outcome.error != "client_disconnected" else str(outcome.status)
        self.child(self.metrics.requests, model, key, status).inc()
        self.child(self.metrics.duration, model, key).observe(now - outcome.started)
        ttft = outcome.first_byte - outcome.started if outcome.first_byte is not None else None
        if ttft is not None:
            self.child(self.metrics.ttft, model, key).observe(ttft)
        reservation = call.ticket.reservation
        charged = charge(outcome.usage, outcome.status == 200, call.stream, outcome.events, reservation)
        prompt, completion = charged.prompt, charged.completion
        if reservation is not None and not charged.estimated and prompt:
            self.tenancy.prompts.learn(model, reservation.basis, prompt)
        recent = self.latency.get(model)
        if recent is not None and outcome.first_byte is not None and outcome.status == 200:
            tpot = (now - outcome.first_byte) / (completion - 1) if call.stream and completion > 1 else None
            recent.add(now, outcome.first_byte - (call.arrived or outcome.started), tpot)
        self.recent.record(model, now, ttft, now - outcome.started, completion, outcome.status, outcome.error)
        if charged.total:
            self.child(self.metrics.tokens, model, key, "prompt").inc(prompt)
            self.child(self.metrics.tokens, model, key, "completion").inc(completion)
        settling = call.ticket.finish(charged.total)
        if settling is not None:  # a limiter that waits (Redis): off the request's path
            task = asyncio.get_running_loop().create_task(settling)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.spec.gateway.access_log:
            access.info("%s", orjson.dumps({
                "request_id": call.request_id.decode(), "key": key, "model": model, "replica": outcome.replica,
                "status": outcome.status, "error": outcome.error, "prompt_tokens": prompt,
                "completion_tokens": completion, "estimated": charged.estimated, "ttft_s": ttft,
                "latency_s": now - outcome.started}).decode())
        if self.writer is not None:
            self.writer.record(UsageRecord(
                ts=time.time(), key_name=key, model=model, replica=outcome.replica, prompt_tokens=prompt,
                completion_tokens=completion, cached_tokens=charged.cached, ttft_s=ttft,
                e2e_s=now - outcome.started, status=outcome.status, error=outcome.error,
                request_id=call.request_id.decode(), estimated=charged.estimated,
                **(texts(call.payload, outcome.body, call.stream) if call.model.store_text else {})))


__all__ = ["Gateway", "parse_usage"]
