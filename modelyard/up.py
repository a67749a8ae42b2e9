from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler

from modelyard.engines import EngineError
from modelyard.fleet.supervisor import Supervisor
from modelyard.gateway.app import create_gateway
from modelyard.gateway.auth import KeyRing, hash_key, new_key
from modelyard.gateway.limits import Limiter, LocalLimiter, RedisLimiter
from modelyard.observability.status import ChangePrinter, banner, status_table
from modelyard.routing.endpoints import EndpointTable
from modelyard.spec.schema import YardSpec
from modelyard.store.base import Store
from modelyard.store.factory import open_store

ENV_KEY = "MODELYARD_API_KEY"
log = logging.getLogger("modelyard")


class UpError(Exception):
    """`modelyard up` cannot start as asked; the message says why and what to do."""


@dataclass(frozen=True)
class KeySetup:
    ring: KeyRing
    shown: str


def state_dir_for(spec: YardSpec, spec_path: Path) -> Path:
    path = Path(spec.state_dir).expanduser()
    return path if path.is_absolute() else (spec_path.resolve().parent / path)


def setup_keys(spec: YardSpec, state_dir: Path) -> KeySetup:
    """Keys from the spec, from $MODELYARD_API_KEY, or else one generated key shown once and kept only hashed."""
    ring = KeyRing()
    for key in spec.gateway.keys:
        if key.sha256:
            ring.add_hash(key.name, key.sha256)
        else:
            assert key.key_env is not None
            secret = os.environ.get(key.key_env)
            if not secret:
                raise UpError(f"gateway.keys: key {key.name!r} reads ${key.key_env}, which is not set")
            ring.add_secret(key.name, secret)
    if env := os.environ.get(ENV_KEY):
        ring.add_secret("env", env)
        return KeySetup(ring, f"${ENV_KEY}")
    if len(ring):
        return KeySetup(ring, "the keys in yard.yaml (gateway.keys)")
    stored = state_dir / "api-key.json"
    if stored.is_file():
        record = json.loads(stored.read_text())
        ring.add_hash(record["name"], record["sha256"])
        return KeySetup(ring, f"the key generated on {record['created']} (shown once then; "
                              f"delete {stored} for a new one, or set ${ENV_KEY})")
    secret = new_key()
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = stored.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": "default", "sha256": hash_key(secret),
                               "created": time.strftime("%Y-%m-%d %H:%M:%S")}))
    tmp.chmod(0o600)
    tmp.replace(stored)
    ring.add_secret("default", secret)
    return KeySetup(ring, f"{secret}   (shown only this once; stored hashed)")


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UpError(f"cannot listen on {host}:{port} ({exc.strerror}); "
                          "stop what uses it or pass --port") from None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `up` owns SIGINT/SIGTERM and stops everything in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _logging(console: Console, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("modelyard")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    file_handler = logging.FileHandler(log_dir / "modelyard.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    screen = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    screen.setLevel(logging.WARNING)
    root.addHandler(screen)


async def open_state(spec: YardSpec, state_dir: Path) -> tuple[Store, Limiter, Any]:
    """The key/usage store and the limiter (Redis-backed when store.redis is set), checked before serving."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = await open_store(spec.store.url, state_dir)
    except Exception as exc:
        raise UpError(f"store.url: cannot open the store ({type(exc).__name__}: {exc})") from None
    if not spec.store.redis:
        return store, LocalLimiter(), None
    import redis.asyncio

    client = redis.asyncio.from_url(spec.store.redis)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        await store.close()
        raise UpError(f"store.redis: cannot reach {spec.store.redis} ({type(exc).__name__}: {exc})") from None
    return store, RedisLimiter(client), client


async def _until_stopped(stop: asyncio.Event, server: asyncio.Task[None], tick: Callable[[], None],
                         every_s: float) -> None:
    """Calls `tick` every `every_s` until a stop signal, or until the gateway ends on its own."""
    while not stop.is_set() and not server.done():
        tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def serve(spec: YardSpec, spec_path: Path, console: Console, live: bool | None = None) -> int:
    state_dir = state_dir_for(spec, spec_path)
    host, port = spec.gateway.host, spec.gateway.port
    keys = setup_keys(spec, state_dir)
    table = EndpointTable()
    supervisor = Supervisor(spec, table, state_dir)
    supervisor.prepare()
    check_port_free(host, port)
    _logging(console, state_dir / "logs")
    store, limiter, redis_client = await open_state(spec, state_dir)
    admin_key = os.environ.get(spec.gateway.admin_key_env) or None
    app = create_gateway(spec, table, keys.ring, store, limiter, admin_key=admin_key)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5, http="httptools")
    server = _Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await supervisor.start()
    server_task = asyncio.create_task(server.serve())
    head = banner(f"http://{host}:{port}/v1", keys.shown, str(state_dir / "logs"))
    use_live = console.is_terminal if live is None else live
    try:
        if use_live:
            with Live(Group(head, status_table(spec, table)), console=console, refresh_per_second=2) as screen:
                await _until_stopped(stop, server_task, lambda: screen.update(Group(head, status_table(spec, table))),
                                     0.5)
        else:
            console.print(head)
            printer = ChangePrinter(console)
            await _until_stopped(stop, server_task, lambda: printer.update(table), 0.25)
    finally:
        console.print("stopping: gateway, then replicas ...")
        server.should_exit = True
        await supervisor.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 10)  # its lifespan's end writes the buffered usage records
        await store.close()
        if redis_client is not None:
            await redis_client.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if server_task.done() and not stop.is_set() and server_task.exception() is not None:
        raise UpError(f"the gateway stopped: {server_task.exception()}")
    console.print("stopped; no process left behind")
    return 0


def run_up(spec: YardSpec, spec_path: Path, console: Console) -> int:
    try:
        # the default asyncio loop, not uvloop: uvloop's spawn loses PR_SET_PDEATHSIG, so replicas would outlive
        # a killed `modelyard up`
        return asyncio.run(serve(spec, spec_path, console))
    except (UpError, EngineError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
