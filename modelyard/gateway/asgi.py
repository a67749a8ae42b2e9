"""The gateway's ASGI app: Starlette for the admin, status, metrics and model routes, and the generation routes
straight from the server to `Gateway.handle` (gateway/app.py)."""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelyard import __version__
from modelyard.gateway.app import Gateway
from modelyard.gateway.auth import KeyRing, Twice, authorization
from modelyard.gateway.errors import openai_error
from modelyard.gateway.limits import Limiter
from modelyard.gateway.openapi import OpenApiEndpoint
from modelyard.gateway.request import GENERATION_PATHS
from modelyard.gateway.tenancy import refuse_twice
from modelyard.observability.exposition import MetricsEndpoint
from modelyard.observability.metrics import GatewayMetrics
from modelyard.observability.ui_routes import StatusPage
from modelyard.routing.endpoints import EndpointTable
from modelyard.spec.schema import YardSpec
from modelyard.store.base import Store

log = logging.getLogger("modelyard.gateway")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return openai_error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)


async def _server_error(request: Request, exc: Exception) -> Response:
    return openai_error(500, f"internal error ({type(exc).__name__})", "internal_error")


class GatewayApp(Starlette):
    """Starlette for every route but the generation ones, which go straight from the server to the gateway.

    Their requests skip Starlette's routing and middleware (an exception handler, a router and a wrapper on
    every `send` of every relayed chunk); an error raised before the answer starts is the same 500 as
    `_server_error`'s, logged.
    """

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            twice = scope["type"] == "http" and isinstance(authorization(scope["headers"]), Twice)
            await (refuse_twice() if twice else super().__call__)(scope, receive, send)
            return
        scope["app"] = self
        try:
            response = await self.gateway.handle(scope, receive)
        except ClientDisconnect:  # it left while sending its body: nobody to answer, nothing to log
            return
        except Exception as exc:
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = await _server_error(Request(scope, receive), exc)
        if isinstance(response, Response) and "modelyard.request_id" in scope:  # a stream sets its own
            response.headers["x-request-id"] = scope["modelyard.request_id"].decode()
        await response(scope, receive, send)


def create_gateway(spec: YardSpec, table: EndpointTable, keys: KeyRing, store: Store | None = None,
                   limiter: Limiter | None = None, metrics: GatewayMetrics | None = None,
                   admin_key: str | None = None, workers: int = 1, ui_key: str | None = None,
                   metrics_key: str | None = None) -> Starlette:
    gateway = Gateway(spec, table, keys, store, limiter, metrics, admin_key, workers)
    routes = [
        *(Route(path, gateway.generate, methods=["POST"]) for path in GENERATION_PATHS),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
        Route("/openapi.json", OpenApiEndpoint(gateway).serve, methods=["GET"]),
        Route("/metrics", MetricsEndpoint(gateway, admin_key, metrics_key).serve, methods=["GET"]),
        *gateway.admin.routes(),
        *StatusPage(gateway, admin_key, ui_key).routes(),
    ]
    app = GatewayApp(gateway, routes=routes, lifespan=gateway.lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.router.redirect_slashes = False  # a 404, never a redirect whose Location is built from the client's Host
    app.state.gateway = gateway
    app.state.version = __version__
    return app


__all__ = ["GatewayApp", "create_gateway"]
