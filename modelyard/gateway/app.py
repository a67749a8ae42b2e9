from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard import __version__
from modelyard.gateway.auth import KeyRing, Principal
from modelyard.gateway.errors import openai_error
from modelyard.gateway.relay import UPSTREAM_ERRORS, Outcome, UpstreamStream
from modelyard.observability.metrics import CONTENT_TYPE, GatewayMetrics
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.router import RoundRobinRouter
from modelyard.spec.schema import YardSpec

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ATTEMPTS = 3


class Gateway:
    """The OpenAI-compatible front: auth, routing to a ready replica, relay, metrics."""

    def __init__(self, spec: YardSpec, table: EndpointTable, keys: KeyRing, metrics: GatewayMetrics | None = None,
                 router: RoundRobinRouter | None = None) -> None:
        self.spec, self.table, self.keys = spec, table, keys
        self.metrics = metrics or GatewayMetrics()
        self.router = router or RoundRobinRouter(table)
        self.created = int(time.time())
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        try:
            yield
        finally:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the gateway's lifespan has not started"
        return self._session

    def _auth(self, request: Request) -> Principal | Response:
        principal = self.keys.authenticate(request.headers.get("authorization"))
        if principal is None:
            message = ("Missing API key: send 'Authorization: Bearer <key>'" if "authorization" not in request.headers
                       else "Incorrect API key provided")
            return openai_error(401, message, "invalid_api_key")
        return principal

    async def models(self, request: Request) -> Response:
        auth = self._auth(request)
        if isinstance(auth, Response):
            return auth
        data = [{"id": m.name, "object": "model", "created": self.created, "owned_by": "modelyard"}
                for m in self.spec.models]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def health(self, request: Request) -> Response:
        models = {m.name: {"ready": len(self.table.ready(m.name)), "replicas": m.replicas} for m in self.spec.models}
        ok = all(v["ready"] > 0 for v in models.values())
        body = {"status": "ok" if ok else "degraded", "models": models}
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    async def prometheus(self, request: Request) -> Response:
        for endpoint in self.table:
            self.metrics.restarts.labels(endpoint.model, str(endpoint.replica)).set(endpoint.restarts)
        for model in self.spec.models:
            replicas = self.table.of(model.name)
            for state in ReplicaState:
                count = sum(1 for e in replicas if e.state is state)
                self.metrics.replicas.labels(model.name, state.value).set(count)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def generate(self, request: Request) -> Response:
        auth = self._auth(request)
        if isinstance(auth, Response):
            return auth
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return openai_error(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return openai_error(400, "the request body is not valid JSON", "invalid_json")
        if not isinstance(payload, dict):
            return openai_error(400, "the request body must be a JSON object", "invalid_json")
        model_name = payload.get("model")
        if not isinstance(model_name, str) or not model_name:
            return openai_error(400, "you must provide a model parameter", "missing_model", "model")
        model = self.spec.model(model_name)
        if model is None:
            return openai_error(404, f"The model '{model_name}' does not exist", "model_not_found", "model")
        stream = payload.get("stream") is True
        return await self._relay(request.url.path, body, payload, model_name, stream, auth, model.timeouts)

    async def _relay(self, path: str, body: bytes, payload: dict[str, Any], model: str, stream: bool,
                     principal: Principal, timeouts: Any) -> Response:
        tried: list[Endpoint] = []
        outcome = Outcome()
        last_error = "no ready replica"
        for attempt in range(MAX_ATTEMPTS):
            endpoint = self.router.pick(model, exclude=tried)
            if endpoint is None:
                break
            if attempt:
                self.metrics.retries.labels(model).inc()
            tried.append(endpoint)
            data = body
            if endpoint.upstream_model and endpoint.upstream_model != model:
                data = orjson.dumps({**payload, "model": endpoint.upstream_model})
            headers = {"Content-Type": "application/json", **endpoint.headers}
            endpoint.in_flight += 1
            self.metrics.in_flight.labels(model).inc()
            try:
                upstream = await self._send(endpoint.url + path, data, headers, timeouts, stream)
            except UPSTREAM_ERRORS as exc:
                self._release(endpoint, model)
                last_error = f"replica {endpoint.id} failed: {type(exc).__name__}"
                continue
            if upstream.status >= 500 and attempt + 1 < MAX_ATTEMPTS:
                upstream.close()
                self._release(endpoint, model)
                last_error = f"replica {endpoint.id} answered {upstream.status}"
                continue
            return await self._respond(upstream, endpoint, model, stream, principal, timeouts, outcome)
        self.metrics.requests.labels(model, principal.name, "503").inc()
        return openai_error(503, f"No replica of model '{model}' could serve the request ({last_error})",
                            "no_ready_replica", headers={"Retry-After": "1"})

    async def _send(self, url: str, data: bytes, headers: dict[str, str], timeouts: Any,
                    stream: bool) -> aiohttp.ClientResponse:
        client_timeout = aiohttp.ClientTimeout(total=timeouts.total_s, connect=timeouts.connect_s)
        wait = timeouts.first_byte_s if stream else timeouts.total_s
        async with asyncio.timeout(wait):
            return await self.session.post(url, data=data, headers=headers, timeout=client_timeout)

    async def _respond(self, upstream: aiohttp.ClientResponse, endpoint: Endpoint, model: str, stream: bool,
                       principal: Principal, timeouts: Any, outcome: Outcome) -> Response:
        def finish(done: Outcome) -> None:
            self._release(endpoint, model)
            self._record(model, principal, done)

        outcome.status = upstream.status
        if stream and upstream.status == 200:
            return UpstreamStream(upstream, endpoint, timeouts, outcome, finish)  # type: ignore[return-value]
        try:
            content = await upstream.read()
        except UPSTREAM_ERRORS as exc:
            upstream.close()
            outcome.status, outcome.error = 502, type(exc).__name__
            finish(outcome)
            return openai_error(502, f"replica {endpoint.id} failed while answering ({type(exc).__name__})",
                                "upstream_error")
        upstream.release()
        outcome.first_byte = time.perf_counter()
        outcome.body = content
        finish(outcome)
        media = upstream.headers.get("Content-Type", "application/json")
        return Response(content, status_code=upstream.status, media_type=media,
                        headers={"x-modelyard-replica": endpoint.id})

    def _release(self, endpoint: Endpoint, model: str) -> None:
        endpoint.in_flight -= 1
        self.metrics.in_flight.labels(model).dec()

    def _record(self, model: str, principal: Principal, outcome: Outcome) -> None:
        now = time.perf_counter()
        status = "error" if outcome.error and outcome.error != "client_disconnected" else str(outcome.status)
        self.metrics.requests.labels(model, principal.name, status).inc()
        self.metrics.duration.labels(model).observe(now - outcome.started)
        if outcome.first_byte is not None:
            self.metrics.ttft.labels(model).observe(outcome.first_byte - outcome.started)
        usage = _usage(outcome.body)
        if usage:
            self.metrics.tokens.labels(model, principal.name, "prompt").inc(usage.get("prompt_tokens", 0))
            self.metrics.tokens.labels(model, principal.name, "completion").inc(usage.get("completion_tokens", 0))


def _usage(tail: bytes) -> dict[str, int] | None:
    """Usage from a non-streamed body or from the last SSE chunk, found without decoding the whole stream."""
    index = tail.rfind(b'"usage"')
    if index < 0:
        return None
    start = tail.rfind(b"{", 0, index)
    line_end = tail.find(b"\n", index)
    candidate = tail[start:line_end] if line_end > 0 else tail[start:]
    for text in (candidate, tail):
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            data = orjson.loads(text)
            usage = data.get("usage") if isinstance(data, dict) else None
            if isinstance(usage, dict):
                return {k: v for k, v in usage.items() if isinstance(v, int)}
    return None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return openai_error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)


async def _server_error(request: Request, exc: Exception) -> Response:
    return openai_error(500, f"internal error ({type(exc).__name__})", "internal_error")


def create_gateway(spec: YardSpec, table: EndpointTable, keys: KeyRing,
                   metrics: GatewayMetrics | None = None) -> Starlette:
    gateway = Gateway(spec, table, keys, metrics)
    routes = [
        Route("/v1/chat/completions", gateway.generate, methods=["POST"]),
        Route("/v1/completions", gateway.generate, methods=["POST"]),
        Route("/v1/embeddings", gateway.generate, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
        Route("/metrics", gateway.prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=gateway.lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.gateway = gateway
    app.state.version = __version__
    return app
