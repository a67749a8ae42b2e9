"""Redis Lua script calls made in one event-loop turn, sent as one pipelined round trip.

Per call::

    result = await pipe.call(script, keys, args)     # script: redis.register_script(...)

Calls made while the loop runs one turn are written to Redis together (EVALSHA each, no MULTI) on the next
turn, so at a high request rate the gateway pays one round trip, and one pass through the client, for many
admissions. Redis still runs each script atomically, one after the other, in the order they were made, so
limits stay as exact as with one call at a time. A lone call goes through the script object itself (which
loads the script when Redis has forgotten it); in a batch, a script Redis has forgotten is run again alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

Call = tuple[Any, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptPipe:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._calls: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._calls:
            loop.call_soon(self._send)
        self._calls.append((script, keys, args, future))
        return future

    def _send(self) -> None:
        calls, self._calls = self._calls, []
        task = asyncio.get_running_loop().create_task(self._run(calls))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, calls: list[Call]) -> None:
        try:
            if len(calls) == 1:
                script, keys, args, _ = calls[0]
                results: list[Any] = [await script(keys=keys, args=args)]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for script, keys, args, _ in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script, keys, args, future), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted and forgot it
                try:
                    result = await script(keys=keys, args=args)
                except Exception as exc:
                    result = exc
            if future.done():  # its request went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Waits for the calls already sent."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
