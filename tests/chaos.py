"""The chaos test's load and what it saw: streamed chat completions through a `modelyard up` cluster while a fault
happens, each request with its own X-Request-Id, so that its usage row can be found afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil

from tests.cluster import Cluster

HANG_S = 30.0  # a request whose answer does not end within this is a hang


@dataclass
class Seen:
    request_id: str
    status: int = 0  # 0: no answer at all (a connection error before the head)
    code: str | None = None  # an error answer's code
    tokens: int = 0  # content chunks relayed
    done: bool = False  # ended with [DONE]
    error_event: bool = False  # ended with an SSE error event
    hung: bool = False
    transport_error: str | None = None

    @property
    def failed_before_first_byte(self) -> bool:
        return self.status != 200

    @property
    def cut(self) -> bool:
        """Started (200), then did not end with [DONE]."""
        return self.status == 200 and not self.done

    @property
    def silent_cut(self) -> bool:
        """Cut without an SSE error event: the client cannot tell an end from a failure."""
        return self.cut and not self.error_event


@dataclass
class Load:
    seen: list[Seen] = field(default_factory=list)
    flowing: int = 0  # content chunks received so far, by every stream (a fault can wait for streams to flow)

    async def until_flowing(self, chunks: int, timeout_s: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.flowing < chunks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @property
    def before_first_byte(self) -> list[Seen]:
        return [s for s in self.seen if s.failed_before_first_byte]

    @property
    def silent_cuts(self) -> list[Seen]:
        return [s for s in self.seen if s.silent_cut]

    @property
    def hangs(self) -> list[Seen]:
        return [s for s in self.seen if s.hung]

    def figures(self) -> dict[str, int]:
        return {"requests": len(self.seen), "failed_before_first_byte": len(self.before_first_byte),
                "cut": sum(1 for s in self.seen if s.cut), "silent_cuts": len(self.silent_cuts),
                "hangs": len(self.hangs), "tokens_delivered": sum(s.tokens for s in self.seen)}


async def _one(client: httpx.AsyncClient, key: str, request_id: str, max_tokens: int, load: Load) -> Seen:
    seen = Seen(request_id)
    body = {"model": "chat", "messages": [{"role": "user", "content": f"chaos {request_id}"}],
            "max_tokens": max_tokens, "stream": True}
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": request_id}
    try:
        async with asyncio.timeout(HANG_S):
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply:
                seen.status = reply.status_code
                if reply.status_code != 200:
                    text = await reply.aread()
                    try:
                        seen.code = orjson.loads(text)["error"]["code"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        seen.code = text[:100].decode(errors="replace")
                    return seen
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        seen.done = True
                    elif data.startswith('{"error"'):
                        seen.error_event = True
                    elif '"content"' in data or '"text"' in data:
                        seen.tokens += 1
                        load.flowing += 1
    except TimeoutError:
        seen.hung = True
    except httpx.HTTPError as exc:
        seen.transport_error = type(exc).__name__
    return seen


async def run_load(cluster: Cluster, key: str, name: str, count: int, concurrency: int, max_tokens: int,
                   fault: Callable[[Load], Awaitable[None]] | None = None) -> Load:
    """`count` streams, `concurrency` at a time; `fault` runs beside them (it starts with the load)."""
    load = Load()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=HANG_S, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                load.seen.append(await _one(client, key, f"{name}-{index}", max_tokens, load))

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        if fault is not None:
            await fault(load)
        await asyncio.gather(*tasks)
    return load


def simulators(cluster: Cluster) -> list[psutil.Process]:
    return [p for p in cluster.engine_processes() if "modelyard.simulator" in " ".join(p.cmdline())]


def redis_servers(cluster: Cluster) -> list[psutil.Process]:
    return [p for p in cluster.engine_processes() if p.name().startswith("redis-server")]


def signal_one(process: psutil.Process, sig: int) -> None:
    os.kill(process.pid, sig)


def usage_by_request(state_dir: Path, ids: list[str], timeout_s: float = 15.0) -> dict[str, tuple[int, int, str]]:
    """request id -> (status, completion tokens, error) from the store, once every id has its row (or the time is
    out: the missing ones are lost)."""
    deadline = time.monotonic() + timeout_s
    rows: dict[str, tuple[int, int, str]] = {}
    while True:
        with sqlite3.connect(f"file:{state_dir / 'modelyard.db'}?mode=ro", uri=True, timeout=10) as db:
            for request_id, status, tokens, error in db.execute(
                    "SELECT request_id, status, completion_tokens, error FROM usage WHERE request_id IS NOT NULL"):
                rows[request_id] = (status, tokens, error or "")
        if all(i in rows for i in ids) or time.monotonic() > deadline:
            return {i: rows[i] for i in ids if i in rows}
        time.sleep(0.25)


def lost_or_zeroed(load: Load, rows: dict[str, tuple[int, int, str]]) -> tuple[list[str], list[str]]:
    """The requests that reached a replica without a usage row, and the streams that delivered tokens but were
    recorded with none."""
    lost = [s.request_id for s in load.seen if s.status == 200 and s.request_id not in rows]
    zeroed = [s.request_id for s in load.seen if s.tokens and s.request_id in rows and rows[s.request_id][1] == 0]
    return lost, zeroed


async def freeze(process: psutil.Process, after_s: float, for_s: float) -> None:
    await asyncio.sleep(after_s)  # after_s: once the caller's streams flow
    signal_one(process, signal.SIGSTOP)
    try:
        await asyncio.sleep(for_s)
    finally:
        signal_one(process, signal.SIGCONT)
