from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn

from modelyard.local_tokenizer import LocalTokenizer
from modelyard.simulator.kv_events import KVEventsConfig
from modelyard.simulator.profiles import Profile
from modelyard.simulator.server import Simulator, _exit_now


def uvicorn_config(app: Simulator, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                          log_level=log_level, access_log=False, timeout_keep_alive=30, backlog=4096)


def serve(profile: Profile, model_name: str, host: str, port: int, log_level: str = "warning",
          kv_events: KVEventsConfig | None = None, role: str | None = None,
          tokenizer: LocalTokenizer | None = None) -> None:
    """Runs one simulated engine in the foreground: waits out the startup delay (weights loading: the port is not
    open yet, as with vLLM), then serves until SIGINT/SIGTERM."""
    if profile.startup_s > 0:
        time.sleep(profile.startup_s)
    app = Simulator(profile, model_name, kv_events=kv_events, role=role, tokenizer=tokenizer)
    uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()


class SimulatorThread:
    """A simulator served from a background thread on 127.0.0.1 (for tests): `with SimulatorThread(...) as sim:`."""

    def __init__(self, profile: Profile, model_name: str = "sim", port: int = 0,
                 crash: Callable[[], None] = _exit_now, kv_events: KVEventsConfig | None = None,
                 role: str | None = None, tokenizer: LocalTokenizer | None = None) -> None:
        self.app = Simulator(profile, model_name, crash=crash, kv_events=kv_events, role=role, tokenizer=tokenizer)
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", port))
        self.thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def start(self, timeout_s: float = 10.0) -> SimulatorThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        sockets = [s for server in self.server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def call(self, fn: Callable[[], object]) -> None:
        """Runs `fn` on the simulator's loop (its state belongs to that thread) and waits for it."""
        assert self.loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(5)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
