from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from modelyard.store.base import Store
from modelyard.store.factory import open_store

T = TypeVar("T")


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = await open_store(url)
    try:
        yield store
    finally:
        await store.close()


def with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    """Runs `body` on a store opened (and closed) in a fresh event loop."""
    async def run() -> T:
        async with opened(url) as store:
            return await body(store)
    return asyncio.run(run())
