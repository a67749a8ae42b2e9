"""modelyard/gateway/limits.py: LocalLimiter, and RedisLimiter on a real Redis shared by two instances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from modelyard.gateway.limits import Admission, Limiter, LocalLimiter, RedisLimiter, Rejection
from modelyard.store.base import KeyRecord
from tests.servers import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _key(**limits: int) -> KeyRecord:
    return KeyRecord(name=f"k-{uuid.uuid4().hex[:8]}", key_hash="0" * 64, **limits)  # type: ignore[arg-type]


@asynccontextmanager
async def _limiters(kind: str, url: str) -> AsyncIterator[tuple[Limiter, Limiter]]:
    """Two limiters that must act as one: two gateway instances (own Redis clients) or one process."""
    if kind == "local":
        local = LocalLimiter()
        yield local, local
        return
    first, second = aioredis.from_url(url), aioredis.from_url(url)
    try:
        yield RedisLimiter(first), RedisLimiter(second)
    finally:
        await first.aclose()
        await second.aclose()


Body = Callable[[Limiter, Limiter], Awaitable[None]]


@pytest.fixture(params=["local", "redis"])
def run_limiters(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def run(body: Body) -> None:
        async def main() -> None:
            async with _limiters(request.param, url) as (a, b):
                await body(a, b)
        asyncio.run(main())
    return run


async def _burst(a: Limiter, b: Limiter, key: KeyRecord, n: int, reserve: int) -> list[Admission | Rejection]:
    return list(await asyncio.gather(*(([a, b][i % 2]).admit(key, reserve) for i in range(n))))


def _admitted(results: list[Admission | Rejection]) -> list[Admission]:
    return [r for r in results if isinstance(r, Admission)]


def test_rpm_is_exact_across_instances(run_limiters: Callable[[Body], None]) -> None:
    async def body(a: Limiter, b: Limiter) -> None:
        key = _key(rpm=20)
        results = await _burst(a, b, key, 61, 1)
        assert len(_admitted(results)) == 20
        rejections = [r for r in results if isinstance(r, Rejection)]
        assert {r.reason for r in rejections} == {"rpm"} and all(1 <= r.retry_after_s <= 60 for r in rejections)
        for admission in _admitted(results):  # settling frees nothing of a per-minute count
            await a.settle(admission, 1)
        assert isinstance(await b.admit(key, 1), Rejection)
    run_limiters(body)


def test_tpm_reserves_then_reconciles_exactly(run_limiters: Callable[[Body], None]) -> None:
    async def body(a: Limiter, b: Limiter) -> None:
        key = _key(tpm=1000)
        results = await _burst(a, b, key, 30, 100)
        admitted = _admitted(results)
        assert len(admitted) == 10
        assert {r.reason for r in results if isinstance(r, Rejection)} == {"tpm"}
        for admission in admitted[:4]:  # each used 50 of its 100 reserved: 200 tokens come back
            await (a if admission.id < "8" else b).settle(admission, 50)
        assert len(_admitted(await _burst(a, b, key, 10, 100))) == 2
        too_big = await a.admit(key, 1001)
        assert isinstance(too_big, Rejection) and too_big.reason == "tpm"
    run_limiters(body)


def test_concurrency_is_exact_across_instances(run_limiters: Callable[[Body], None]) -> None:
    async def body(a: Limiter, b: Limiter) -> None:
        key = _key(max_concurrency=3)
        admitted = _admitted(await _burst(a, b, key, 10, 0))
        assert len(admitted) == 3
        rejected = await b.admit(key, 0)
        assert isinstance(rejected, Rejection) and rejected.reason == "concurrency" and rejected.retry_after_s >= 1
        await a.settle(admitted[0], 0)
        await a.settle(admitted[0], 0)  # a second settle changes nothing
        assert len(_admitted(await _burst(a, b, key, 5, 0))) == 1
    run_limiters(body)


def test_budget_counts_reserved_and_unwritten_tokens(run_limiters: Callable[[Body], None]) -> None:
    async def body(a: Limiter, b: Limiter) -> None:
        key = _key(budget_tokens=1000)
        admitted = _admitted(await _burst(a, b, key, 5, 300))
        assert len(admitted) == 3
        for admission in admitted:
            await b.settle(admission, 100)  # 300 tokens used, not yet in the store
        assert len(_admitted(await _burst(a, b, key, 5, 300))) == 2  # 300 + 600 <= 1000
        written = KeyRecord(**{**key.__dict__, "used_tokens": 300})
        await a.commit_budget({key.name: 300})  # the usage writer put them in the store
        rejected = await a.admit(written, 300)  # 300 (store) + 600 (reserved) + 300 > 1000
        assert isinstance(rejected, Rejection) and rejected.reason == "budget" and rejected.code == "budget_exceeded"
        assert isinstance(await b.admit(written, 100), Admission)
    run_limiters(body)


def test_unlimited_key_is_always_admitted(run_limiters: Callable[[Body], None]) -> None:
    async def body(a: Limiter, b: Limiter) -> None:
        assert len(_admitted(await _burst(a, b, _key(), 50, 1000))) == 50
    run_limiters(body)


def test_limits_are_per_key(run_limiters: Callable[[Body], None]) -> None:
    async def body(a: Limiter, b: Limiter) -> None:
        first, second = _key(rpm=1), _key(rpm=1)
        assert isinstance(await a.admit(first, 0), Admission)
        assert isinstance(await b.admit(second, 0), Admission)
        assert isinstance(await b.admit(first, 0), Rejection)
    run_limiters(body)


def test_local_window_slides() -> None:
    now = [1000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    key = _key(rpm=2, tpm=100)

    async def body() -> None:
        assert isinstance(await limiter.admit(key, 50), Admission)
        now[0] += 30
        assert isinstance(await limiter.admit(key, 50), Admission)
        rejected = await limiter.admit(key, 1)
        assert isinstance(rejected, Rejection) and rejected.reason == "rpm" and rejected.retry_after_s == 30
        now[0] += 30  # the first admission leaves the window
        assert isinstance(await limiter.admit(key, 50), Admission)
        now[0] += 29.5
        tpm = await limiter.admit(key, 60)
        assert isinstance(tpm, Rejection) and tpm.reason == "rpm"
    asyncio.run(body())


def test_rejection_codes() -> None:
    assert Rejection("rpm", 3).code == "rate_limit_exceeded" and "requests-per-minute" in Rejection("rpm", 3).message
    assert Rejection("concurrency", 1).code == "concurrency_limit_exceeded"


def test_a_key_without_limits_costs_no_redis_round_trip() -> None:
    class NoRedis:
        def register_script(self, script: str) -> Callable[..., Awaitable[object]]:
            async def call(**kwargs: object) -> object:
                raise AssertionError("a key without limits reached Redis")
            return call

    limiter = RedisLimiter(NoRedis())

    async def body() -> None:
        admission = await limiter.admit(_key(), 100)
        assert isinstance(admission, Admission) and admission.settled
        await limiter.settle(admission, 20)
    asyncio.run(body())


def test_a_burst_is_exact_after_redis_forgot_its_scripts(redis_url: str) -> None:
    async def main() -> None:
        client = aioredis.from_url(redis_url)
        try:
            limiter = RedisLimiter(client)
            key = _key(rpm=5)
            assert isinstance(await limiter.admit(key, 1), Admission)  # the scripts are loaded
            await client.script_flush()  # as after a Redis restart
            results = list(await asyncio.gather(*(limiter.admit(key, 1) for _ in range(8))))  # one pipeline
            assert len(_admitted(results)) == 4
            await asyncio.gather(*(limiter.settle(a, 1) for a in _admitted(results)))
        finally:
            await client.aclose()
    asyncio.run(main())
