from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler

from modelyard.engines import EngineError, LaunchPlan, get_engine
from modelyard.fleet.child_env import replica_env, secret_names, worker_env
from modelyard.fleet.control import ControlServer
from modelyard.fleet.gateway_workers import GatewayWorkers, WorkerError, worker_count
from modelyard.fleet.process import open_log
from modelyard.fleet.reconciler import Reconciler
from modelyard.fleet.redis_server import PrivateRedis, RedisServerError
from modelyard.fleet.rollout import Rollout
from modelyard.fleet.supervisor import Supervisor
from modelyard.gateway.auth import API_KEY_ENV, KeyRing, hash_key, new_key
from modelyard.observability.status import ChangePrinter, banner, status_table
from modelyard.routing.endpoints import EndpointTable
from modelyard.spec.schema import YardSpec
from modelyard.store.factory import open_store

ENV_KEY = API_KEY_ENV
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


async def check_state(spec: YardSpec, state_dir: Path, spec_text: str | None = None) -> None:
    """Opens the store (which applies its migrations, here, once, before any worker opens it), records the spec
    as the serving revision, and reaches store.redis, so that a wrong url stops `up` with a clear message instead
    of failing every request."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = await open_store(spec.store.url, state_dir)
    except Exception as exc:
        raise UpError(f"store.url: cannot open the store ({type(exc).__name__}: {exc})") from None
    try:
        if spec_text is not None:
            await store.add_revision(spec_text, os.environ.get("USER") or "unknown", "modelyard up", "serving")
    finally:
        await store.close()
    if not spec.store.redis:
        return
    import redis.asyncio

    client = redis.asyncio.from_url(spec.store.redis)
    try:
        await client.ping()
    except Exception as exc:
        raise UpError(f"store.redis: cannot reach {spec.store.redis} ({type(exc).__name__}: {exc})") from None
    finally:
        await client.aclose()


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


async def shared_limiter(spec: YardSpec, state_dir: Path, count: int, log_path: Path) -> PrivateRedis | None:
    """Several workers and no store.redis: a private redis-server, one limiter for all of them, so that a key's
    limits are exact across the workers; else None (store.redis, or one worker's own)."""
    if spec.store.redis is None and count > 1:
        return await PrivateRedis.start(state_dir, log_path)
    return None


def worker_settings(spec: YardSpec, ring: KeyRing, state_dir: Path, redis_url: str | None, count: int,
                    metrics_dir: Path) -> dict[str, Any]:
    """What every gateway worker is configured with (gateway/workers.py reads it), by `up` and `gateway` alike."""
    return {"spec": spec.model_dump(mode="json"), "keys": ring.hashed(),
            "admin_key": os.environ.get(spec.gateway.admin_key_env) or None, "state_dir": str(state_dir),
            "ui_key": (os.environ.get(spec.gateway.ui_key_env) or None) if spec.gateway.ui_key_env else None,
            "metrics_key": (os.environ.get(spec.gateway.metrics_key_env) or None) if spec.gateway.metrics_key_env
            else None,
            "redis": redis_url, "workers": count, "metrics_dir": str(metrics_dir)}


async def _until_stopped(stop: asyncio.Event, tick: Callable[[], None], every_s: float) -> None:
    """Calls `tick` every `every_s` until a stop signal."""
    while not stop.is_set():
        tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Runs `work` to its end, or until a stop signal (Ctrl-C while the workers start)."""
    task, waiter = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # its error, if it failed


async def _screen(spec: YardSpec, table: EndpointTable, head: Any, console: Console, live: bool | None,
                  stop: asyncio.Event, control: Reconciler) -> None:
    events = _EventPrinter(console, control)
    if console.is_terminal if live is None else live:
        def refresh() -> None:
            events.update()
            screen.update(Group(head, status_table(spec, table, control.desired)))

        with Live(Group(head, status_table(spec, table, control.desired)), console=console,
                  refresh_per_second=2) as screen:
            await _until_stopped(stop, refresh, 0.5)
    else:
        console.print(head)
        printer = ChangePrinter(console)

        def tick() -> None:
            events.update()
            printer.update(table)

        await _until_stopped(stop, tick, 0.25)


class _EventPrinter:
    """The control plane's decisions, one line each, as they are made."""

    def __init__(self, console: Console, control: Reconciler) -> None:
        self.console, self.control, self.seen = console, control, control.total

    def update(self) -> None:
        fresh = min(self.control.total - self.seen, len(self.control.events))
        for event in list(self.control.events)[len(self.control.events) - fresh:]:
            self.console.print(f"control: {event}", highlight=False, markup=False, soft_wrap=True)
        self.seen = self.control.total


async def serve(spec: YardSpec, spec_path: Path, console: Console, live: bool | None = None) -> int:
    state_dir = state_dir_for(spec, spec_path)
    host, port = spec.gateway.host, spec.gateway.port
    keys = setup_keys(spec, state_dir)
    table = EndpointTable()
    supervisor = Supervisor(spec, table, state_dir)
    supervisor.prepare()
    check_port_free(host, port)
    _logging(console, state_dir / "logs")
    await check_state(spec, state_dir, spec_path.read_text(encoding="utf-8"))
    count = worker_count(spec.gateway.workers)
    metrics_dir = fresh_dir(state_dir / "metrics")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log_file = open_log(state_dir / "logs" / "modelyard.log")
    private: PrivateRedis | None = None
    workers: GatewayWorkers | None = None
    control_task: asyncio.Task[None] | None = None
    channel: ControlServer | None = None
    try:
        private = await shared_limiter(spec, state_dir, count, state_dir / "logs" / "redis.log")
        settings = worker_settings(spec, keys.ring, state_dir, private.url if private else spec.store.redis, count,
                                   metrics_dir)
        control: Reconciler | None = None
        env = worker_env(spec, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        workers = GatewayWorkers(table, count, settings, env, log_file, metrics_dir,
                                 host, port, fleet=lambda: control.view() if control is not None else {})
        control = Reconciler(spec, supervisor, table, workers, trace_dir=state_dir / "traces")
        await supervisor.start()
        control_task = asyncio.create_task(control.run(stop), name="reconcile")
        channel = await control_channel(spec, spec_path, state_dir, supervisor, control, workers)
        await _unless_stopped(workers.start(), stop)
        log.info("gateway: %d worker(s) on %s:%d, pids %s", count, host, port, workers.pids)
        head = banner(f"http://{host}:{port}/v1", keys.shown, str(state_dir / "logs"))
        await _screen(spec, table, head, console, live, stop, control)
    except (WorkerError, RedisServerError) as exc:
        raise UpError(str(exc)) from None
    finally:
        console.print("stopping: gateway, then replicas ...")
        stop.set()
        if channel is not None:
            await channel.stop()
        if control_task is not None:
            await asyncio.gather(control_task, return_exceptions=True)
        if workers is not None:
            await workers.stop()  # each worker finishes its requests and writes its buffered usage records
        await supervisor.stop()
        if private is not None:
            await private.stop()
        log_file.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    console.print("stopped; no process left behind")
    return 0


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")  # an environment variable named so is printed as ***


def dry_run(spec: YardSpec, console: Console) -> int:
    """`up --dry-run`: every replica's command line and whole environment, as `fleet/child_env.replica_env` makes it
    at start (secrets masked); starts nothing."""
    withheld = secret_names(spec)
    for replica_id, model, plan in Supervisor(spec, EndpointTable(), Path(".")).plans():
        engine = get_engine(model.engine)
        role = model.role_of(int(replica_id.rsplit("/", 1)[1]))
        console.print(f"[bold]{replica_id}[/]  engine {model.engine}, task {engine.task(model).value}"
                      + (f", role {role}" if role else ""), highlight=False)
        if not isinstance(plan, LaunchPlan):
            console.print(f"  {plan}", highlight=False, markup=False, soft_wrap=True)
            continue
        for name, value in sorted(replica_env(engine, model, plan, withheld).items()):
            secret = any(word in name.upper() for word in SECRET_WORDS)
            console.print(f"  env  {name}={'***' if secret else value}", highlight=False, markup=False,
                          soft_wrap=True)
        console.print(f"  argv {shlex.join(plan.argv)}", highlight=False, markup=False, soft_wrap=True)
    console.print("(dry run: nothing started; ports are picked free when `up` starts)", style="dim")
    return 0


async def control_channel(spec: YardSpec, spec_path: Path, state_dir: Path, supervisor: Supervisor,
                          control: Reconciler, workers: GatewayWorkers) -> ControlServer:
    """`modelyard apply`'s way in: the rollout over this cluster, served on state_dir's control socket."""
    rollout = Rollout(spec, spec_path.resolve().parent, supervisor, control, workers,
                      store=lambda: open_store(spec.store.url, state_dir),
                      keys=lambda new: setup_keys(new, state_dir).ring.hashed())
    channel = ControlServer(rollout, state_dir)
    await channel.start()
    return channel


def run_up(spec: YardSpec, spec_path: Path, console: Console) -> int:
    try:
        # the default asyncio loop, not uvloop: uvloop's spawn loses PR_SET_PDEATHSIG, so replicas would outlive
        # a killed `modelyard up` (the gateway workers, which spawn nothing, run uvloop)
        return asyncio.run(serve(spec, spec_path, console))
    except (UpError, EngineError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
