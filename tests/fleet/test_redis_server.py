"""The private redis-server is supervised: killed, it is started again on the same socket, and a limiter on a
client made before (as each gateway worker's is) admits again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis.asyncio

from modelyard.fleet.redis_server import PrivateRedis, redis_server_binary
from modelyard.fleet.replica import Backoff
from modelyard.gateway.limits import Admission, RedisLimiter
from modelyard.store.base import KeyRecord


async def _admit_after_restart(state_dir: Path) -> tuple[int, list[str]]:
    private = await PrivateRedis.start(state_dir, state_dir / "redis.log", Backoff(initial_s=0.1, max_s=0.5))
    pool = redis.asyncio.BlockingConnectionPool.from_url(private.url, max_connections=8, timeout=5)
    client = redis.asyncio.Redis.from_pool(pool)
    limiter = RedisLimiter(client)
    key = KeyRecord(name="team", key_hash="h", rpm=1_000)
    outcomes: list[str] = []
    try:
        assert isinstance(await limiter.admit(key, 10), Admission)
        assert private.process is not None
        first = private.process.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                result = await limiter.admit(key, 10)
            except Exception as exc:  # down: the gateway answers 503 limiter_unavailable meanwhile
                outcomes.append(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            outcomes.append(type(result).__name__)
            break
        assert private.process.pid != first
        return private.restarts, outcomes
    finally:
        await client.aclose()
        await private.stop()


@pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server binary")
def test_a_killed_private_redis_is_restarted_and_the_limiter_reconnects(tmp_path: Path) -> None:
    restarts, outcomes = asyncio.run(_admit_after_restart(tmp_path))
    assert restarts == 1
    assert outcomes[-1] == "Admission"  # the same client, its scripts loaded again (NOSCRIPT after the restart)
