"""modelyard/gateway/usage.py: UsageWriter, batched and off the request path, against a real SQLite store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

from modelyard.gateway.tokens import Reservation
from modelyard.gateway.usage import Charge, UsageWriter, charge
from modelyard.store.base import KeyLimits, UsageRecord
from modelyard.store.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[2]


def _record(i: int, key: str = "team-a") -> UsageRecord:
    return UsageRecord(ts=time.time(), key_name=key, model="chat", replica="chat-0", prompt_tokens=i,
                       completion_tokens=1, e2e_s=0.01)


async def _count(path: Path) -> int:
    store = await SQLiteStore.open(path)
    try:
        return sum(r.requests for r in await store.usage_report("key", 0))
    finally:
        await store.close()


def test_buffered_records_are_flushed_on_close(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SQLiteStore.open(tmp_path / "u.db")
        await store.create_key("team-a", KeyLimits())
        flushed: list[dict[str, int]] = []

        async def on_flushed(totals: Mapping[str, int]) -> None:
            flushed.append(dict(totals))

        writer = UsageWriter(store, flush_interval_s=3600, batch_size=1000, on_flushed=on_flushed)
        writer.start()
        for i in range(25):
            writer.record(_record(i))
        assert writer.buffered == 25 and await _count(tmp_path / "u.db") == 0  # nothing written on the way
        await writer.close()
        assert writer.buffered == 0 and writer.written == 25
        assert flushed == [{"team-a": sum(range(25)) + 25}]
        key = await store.get_key("team-a")
        assert key is not None and key.used_tokens == sum(range(25)) + 25
        writer.record(_record(0))  # after close: dropped, counted
        assert writer.dropped == 1
        await store.close()
        assert await _count(tmp_path / "u.db") == 25
    asyncio.run(body())


def test_a_full_batch_is_written_by_the_background_task(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SQLiteStore.open(tmp_path / "u.db")
        writer = UsageWriter(store, flush_interval_s=3600, batch_size=10)
        writer.start()
        for i in range(10):
            writer.record(_record(i))
        for _ in range(1000):  # bounded: the background task writes the batch without close()
            if writer.written == 10:
                break
            await asyncio.sleep(0.01)
        assert writer.written == 10 and writer.buffered == 0
        await writer.close()
        await store.close()
    asyncio.run(body())


def test_buffer_is_bounded(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SQLiteStore.open(tmp_path / "u.db")
        writer = UsageWriter(store, flush_interval_s=3600, batch_size=1000, max_buffer=5)
        for i in range(8):
            writer.record(_record(i))
        assert writer.buffered == 5 and writer.dropped == 3
        await writer.close()
        await store.close()
        assert await _count(tmp_path / "u.db") == 5
    asyncio.run(body())


def test_retention_purges_old_records(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SQLiteStore.open(tmp_path / "u.db")
        await store.write_usage([UsageRecord(ts=time.time() - 10 * 86400, key_name="a", model="chat")])
        writer = UsageWriter(store, flush_interval_s=0.01, retention_s=86400)
        writer.start()
        writer.record(_record(1))
        for _ in range(1000):
            if writer.written == 1 and len(await store.usage_report("key", 0)) == 1:
                break
            await asyncio.sleep(0.01)
        rows = await store.usage_report("key", 0)
        assert [r.group for r in rows] == ["team-a"]
        await writer.close()
        await store.close()
    asyncio.run(body())


CHILD = textwrap.dedent("""
    import asyncio, signal, sys, time
    from modelyard.gateway.usage import UsageWriter
    from modelyard.store.base import UsageRecord
    from modelyard.store.sqlite import SQLiteStore

    async def main(path, n):
        store = await SQLiteStore.open(path)
        writer = UsageWriter(store, flush_interval_s=3600, batch_size=10**6)
        writer.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        for i in range(n):
            writer.record(UsageRecord(ts=time.time(), key_name="k", model="chat", prompt_tokens=i))
        print("ready", flush=True)
        await stop.wait()
        await writer.close()
        await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def test_sigterm_flushes_what_was_buffered(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "137"], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        assert asyncio.run(_count(path)) == 0  # buffered, not written
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert asyncio.run(_count(path)) == 137


def test_the_engines_usage_is_charged_else_an_estimate_for_what_was_served() -> None:
    reservation = Reservation(prompt=30, completion=100, basis=120)
    spaced = b'{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}'
    assert charge(spaced, True, True, 50, reservation) == Charge(7, 3)
    assert charge(b"", True, True, 50, reservation) == Charge(30, 50, estimated=True)  # cut, or no usage sent
    assert charge(b"", False, True, 0, reservation) == Charge()  # nothing served: nothing charged
    body = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "twelve bytes"}}]}'
    assert charge(body, True, False, 0, reservation) == Charge(30, 3, estimated=True)
    assert charge(b'{"data": []}', True, False, 0, Reservation(9, 0, 36)) == Charge(9, 0, estimated=True)
