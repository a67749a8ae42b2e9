"""The local control channel of a running `up`: HTTP on a unix socket in state_dir (`control.sock`, mode 0600:
only the user who runs `up` can talk to it; never a TCP port). `modelyard apply` and `rollback` post a revision
there and read its progress, one JSON line at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from modelyard.fleet.rollout import ApplyError, Rollout

SOCKET_NAME = "control.sock"


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ControlServer:
    def __init__(self, rollout: Rollout, state_dir: Path) -> None:
        self.rollout, self.path = rollout, socket_path(state_dir)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/apply", self._apply)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an `up` that was killed
        old = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(self.path)).start()
        finally:
            os.umask(old)
        self.path.chmod(0o600)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _apply(self, request: web.Request) -> web.StreamResponse:
        try:
            body: dict[str, Any] = await request.json()
            text, author, message = str(body["spec"]), str(body.get("author", "")), str(body.get("message", ""))
            surge = max(1, int(body.get("max_surge", 1)))
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "the body must be {spec, author, message, max_surge}"}, status=400)
        if self.rollout.busy:
            return web.json_response({"error": "another apply is in progress"}, status=409)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        lines: asyncio.Queue[str] = asyncio.Queue()
        work = asyncio.create_task(self.rollout.apply(text, author, message, lines.put_nowait, surge))
        while not work.done() or not lines.empty():
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(lines.get(), 0.2)
                await response.write(orjson.dumps({"progress": line}) + b"\n")
        try:
            outcome = work.result()
            result: dict[str, Any] = {"applied": outcome.applied, "revision": outcome.revision, "gates": outcome.gates}
        except ApplyError as exc:
            result = {"applied": False, "error": str(exc)}
        await response.write(orjson.dumps({"result": result}) + b"\n")
        await response.write_eof()
        return response
