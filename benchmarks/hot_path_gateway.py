"""One gateway process on uvloop + httptools (the gateway's own server, gateway/server.py; uvicorn for a commit from
before it), built as a gateway worker builds it: store keys cached from the
SQLite store, LocalLimiter (RedisLimiter on $REDIS_URL when set), usage writer on. For
benchmarks/gateway_hot_path.sh; with $SRC set, the modelyard of that checkout (another commit) is imported
instead of this one.
usage: python benchmarks/hot_path_gateway.py yard.yaml
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

if os.environ.get("SRC"):  # the modelyard of another checkout, not the editable install's
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.environ["SRC"])

from pathlib import Path  # noqa: E402

import uvicorn  # noqa: E402
import uvloop  # noqa: E402

from modelyard.fleet.supervisor import Supervisor  # noqa: E402
from modelyard.gateway.auth import KeyRing  # noqa: E402
from modelyard.gateway.limits import Limiter, LocalLimiter, RedisLimiter  # noqa: E402
from modelyard.routing.endpoints import EndpointTable  # noqa: E402
from modelyard.spec.loader import load_spec  # noqa: E402
from modelyard.store.factory import open_store  # noqa: E402

try:
    from modelyard.gateway.asgi import create_gateway  # noqa: E402
except ImportError:  # a commit from before gateway/asgi.py
    from modelyard.gateway.app import create_gateway  # type: ignore[attr-defined,no-redef]  # noqa: E402


async def serve(app: object, host: str, port: int) -> None:
    """Until SIGINT/SIGTERM: the workers' server where this checkout has it, else uvicorn (older commits)."""
    try:
        from modelyard.gateway.server import Server
        from modelyard.gateway.workers import listen_socket
    except ImportError:
        config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on",
                                http="httptools", loop="none")
        await uvicorn.Server(config).serve()
        return
    server, stop = Server(app), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sock = listen_socket(host, port)
    try:
        if await server.start(sock):
            await stop.wait()
        await server.shutdown()
    finally:
        sock.close()


async def main(path: Path) -> None:
    spec = load_spec(path)
    state = Path(spec.state_dir)
    table = EndpointTable()
    supervisor = Supervisor(spec, table, state)
    store = await open_store(spec.store.url, state)
    limiter: Limiter = LocalLimiter()
    if os.environ.get("REDIS_URL"):  # the limiter several gateway workers share (as gateway/workers.py builds it)
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(os.environ["REDIS_URL"], max_connections=64, timeout=5)
        limiter = RedisLimiter(redis.asyncio.Redis.from_pool(pool))
    app = create_gateway(spec, table, KeyRing(), store, limiter)
    await supervisor.start()
    try:
        await serve(app, spec.gateway.host, spec.gateway.port)
    finally:
        await supervisor.stop()
        await store.close()


if __name__ == "__main__":
    print("modelyard from", os.path.dirname(__import__("modelyard").__file__), flush=True)
    uvloop.run(main(Path(sys.argv[1])))
