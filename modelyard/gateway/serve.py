"""`modelyard gateway`: the gateway alone, with no supervisor and no reconciler: the image's entry point in
Kubernetes. The parent process keeps the endpoint table from discovery (gateway/discovery.py: the models' Service
EndpointSlices in a cluster, an external server's `urls:` anywhere) and runs the gateway workers on it, the same
workers as `modelyard up` (fleet/gateway_workers.py). Everything it logs goes to stderr, the workers' logs too:
in a container that is the log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from rich.console import Console

from modelyard.fleet.child_env import worker_env
from modelyard.fleet.gateway_workers import GatewayWorkers, WorkerError, worker_count
from modelyard.fleet.redis_server import PrivateRedis, RedisServerError
from modelyard.gateway.discovery import EndpointSliceSource, KubeAPI, add_static, discovered_models
from modelyard.observability.status import ChangePrinter, banner
from modelyard.routing.endpoints import EndpointTable
from modelyard.spec.schema import YardSpec
from modelyard.up import (
    UpError,
    check_port_free,
    check_state,
    fresh_dir,
    setup_keys,
    shared_limiter,
    state_dir_for,
    worker_settings,
)

log = logging.getLogger("modelyard.gateway")
FIRST_LIST_TIMEOUT_S = 30.0  # the workers start once the replicas are known, or after this with what is known
PRINT_EVERY_S = 0.25


def kube_api(kube_api_url: str | None, namespace: str | None) -> KubeAPI | None:
    """`--kube-api URL`, else the cluster this runs in, else None (outside Kubernetes)."""
    if kube_api_url:
        return KubeAPI.at(kube_api_url, namespace)
    return KubeAPI.in_cluster(namespace)


def _logging() -> None:
    root = logging.getLogger("modelyard")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


async def _first_list(source: EndpointSliceSource, task: asyncio.Task[None], stop: asyncio.Event) -> None:
    waiters = {asyncio.ensure_future(source.synced.wait()), asyncio.ensure_future(stop.wait()), task}
    try:
        await asyncio.wait(waiters, timeout=FIRST_LIST_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters - {task}:
            waiter.cancel()
    if task.done():
        task.result()  # its error, if it failed
    elif not source.synced.is_set() and not stop.is_set():
        log.warning("no answer from the Kubernetes API %s within %.0fs: serving, replicas follow when it answers",
                    source.api.url, FIRST_LIST_TIMEOUT_S)


async def _start(workers: GatewayWorkers, stop: asyncio.Event) -> bool:
    """Starts the workers; False if a stop signal came first."""
    start, waiter = asyncio.ensure_future(workers.start()), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([start, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not start.done():
            start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start  # its error, if it failed
    return not stop.is_set()


async def _print_changes(table: EndpointTable, console: Console, stop: asyncio.Event) -> None:
    printer = ChangePrinter(console)
    while not stop.is_set():
        printer.update(table)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRINT_EVERY_S)


async def serve(spec: YardSpec, spec_path: Path, console: Console, api: KubeAPI | None) -> int:
    state_dir = state_dir_for(spec, spec_path)
    host, port = spec.gateway.host, spec.gateway.port
    keys = setup_keys(spec, state_dir)
    table = EndpointTable()
    add_static(spec, table)
    pods = discovered_models(spec)
    source = EndpointSliceSource(spec, table, api) if api is not None and pods else None
    check_port_free(host, port)
    _logging()
    if api is None and pods:
        log.warning("not in a Kubernetes cluster and no --kube-api: %s get no replicas here (`modelyard up` runs "
                    "them on this machine)", ", ".join(m.name for m in pods))
    await check_state(spec, state_dir)  # no revision: a gateway applies none
    count = worker_count(spec.gateway.workers)
    metrics_dir = fresh_dir(state_dir / "metrics")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    private: PrivateRedis | None = None
    workers: GatewayWorkers | None = None
    discovery: asyncio.Task[None] | None = None
    try:
        if source is not None:
            discovery = asyncio.create_task(source.run(), name="discovery")
            await _first_list(source, discovery, stop)
        private = await shared_limiter(spec, state_dir, count, state_dir / "redis.log")
        settings = worker_settings(spec, keys.ring, state_dir, private.url if private else spec.store.redis, count,
                                   metrics_dir)
        env = worker_env(spec, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        workers = GatewayWorkers(table, count, settings, env, sys.stderr.buffer, metrics_dir, host, port)
        if await _start(workers, stop):
            log.info("gateway: %d worker(s) on %s:%d, pids %s", count, host, port, workers.pids)
            where = f"Kubernetes API {api.url}, namespace {api.namespace}" if source and api else "urls: only"
            console.print(banner(f"http://{host}:{port}/v1", keys.shown, f"stderr (replicas from {where})"))
            await _print_changes(table, console, stop)
    except (WorkerError, RedisServerError) as exc:
        raise UpError(str(exc)) from None
    finally:
        stop.set()
        if workers is not None:
            await workers.stop()  # each worker finishes its requests and writes its buffered usage records
        if discovery is not None:
            discovery.cancel()
            await asyncio.gather(discovery, return_exceptions=True)
        if private is not None:
            await private.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run_gateway(spec: YardSpec, spec_path: Path, console: Console, kube_api_url: str | None = None,
                namespace: str | None = None) -> int:
    try:
        return asyncio.run(serve(spec, spec_path, console, kube_api(kube_api_url, namespace)))
    except (UpError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
