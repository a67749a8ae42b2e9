"""A minimal, fast OpenAI-compatible upstream for gateway benchmarks: every completion streams its tokens a fixed
interval apart (default 64 tokens, 5 ms), with no prefill cost, no batch slowdown and no concurrency limit.

A raw asyncio protocol (HTTP/1.1 keep-alive, chunked SSE, one timer per token on an absolute schedule) so that one
process relays tens of thousands of chunks per second; `--workers N` forks N processes on one SO_REUSEPORT port,
`--cpus 2,3` pins worker i to the i-th listed core. Depends only on the standard library (uvloop and orjson are used
when installed). The first content token goes out with the role chunk as soon as the request is read (TTFT = 0).

usage: python benchmarks/mock_upstream.py --port 8000 [--workers 4] [--cpus 2,3,4,5] [--itl-ms 5] [--tokens 64]
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import time
from typing import Any

try:
    import orjson

    def loads(raw: bytes) -> Any:
        return orjson.loads(raw)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - the device image may lack orjson
    def loads(raw: bytes) -> Any:
        return json.loads(raw)

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
END = b"0\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def reply(status: str, body: bytes, close: bool = False) -> bytes:
    conn = b"connection: close\r\n" if close else b""
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
            % (status.encode(), len(body), conn)) + body


class Stream:
    """The remaining tokens of one streamed completion, each written by its own timer."""

    def __init__(self, proto: Upstream, token: bytes, tail: bytes, n: int, itl: float) -> None:
        self.proto, self.token, self.tail, self.left, self.itl = proto, token, tail, n, itl
        self.t0 = time.monotonic()
        self.k = 0

    def schedule(self) -> None:
        self.k += 1
        self.proto.loop.call_at(self.t0 + self.k * self.itl, self.step)

    def step(self) -> None:
        transport = self.proto.transport
        if transport is None or transport.is_closing():
            return
        self.left -= 1
        if self.left > 0:
            transport.write(self.token)
            self.schedule()
        else:
            transport.write(self.token + self.tail)
            self.proto.busy = False
            self.proto.pump()


class Upstream(asyncio.Protocol):
    ids = itertools.count()

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.buf, self.busy = args, b"", False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.pump()

    def pump(self) -> None:
        """Serve the buffered requests in order; a stream in progress holds the connection (no pipelining)."""
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
            method, path = (head[0].split(" ") + ["", ""])[:2]
            self.handle(method, path.split("?")[0], body, headers.get("connection", "").lower() == "close")

    def handle(self, method: str, path: str, body: bytes, close: bool) -> None:
        assert self.transport is not None
        model = self.args.model
        if method == "GET" and path in ("/health", "/healthz", "/ping"):
            self.transport.write(reply("200 OK", b"{}", close))
        elif method == "GET" and path.endswith("/models"):
            self.transport.write(reply("200 OK", dumps({"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "mock", "max_model_len": 8192}]}), close))
        elif method == "POST" and path.endswith(("/chat/completions", "/completions")):
            self.complete(path.endswith("/chat/completions"), body, close)
        else:
            self.transport.write(reply("404 Not Found", b'{"error":{"message":"not found"}}', close))
        if close:
            self.transport.close()

    def complete(self, chat: bool, body: bytes, close: bool) -> None:
        assert self.transport is not None
        try:
            req = loads(body or b"{}")
        except ValueError:
            self.transport.write(reply("400 Bad Request", b'{"error":{"message":"bad json"}}', close))
            return
        n = max(1, int(req.get("max_tokens") or req.get("max_completion_tokens") or self.args.tokens))
        text = " ".join(str(m.get("content", "")) for m in req.get("messages", [])) if chat else str(req.get("prompt"))
        usage = {"prompt_tokens": max(1, len(text.split())), "completion_tokens": n,
                 "total_tokens": max(1, len(text.split())) + n}
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{os.getpid()}-{next(self.ids)}"
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": req.get("model") or self.args.model}
        if not req.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": " tok" * n}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": " tok" * n, "finish_reason": "length"})
            whole = {**base, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                     "usage": usage}
            self.transport.write(reply("200 OK", dumps(whole), close))
            return

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish} if chat else \
                {"index": 0, "text": delta.get("content", ""), "finish_reason": finish}
            return chunk(dumps({**base, "choices": [choice]}))

        tail = event({}, "length")
        if (req.get("stream_options") or {}).get("include_usage"):
            tail += chunk(dumps({**base, "choices": [], "usage": usage}))
        tail += chunk(b"[DONE]") + END
        first = SSE_HEAD + (event({"role": "assistant", "content": ""}) if chat else b"") + event({"content": " tok"})
        if n == 1:
            self.transport.write(first + tail)
            return
        self.transport.write(first)
        self.busy = True
        Stream(self, event({"content": " tok"}), tail, n - 1, self.args.itl_ms / 1000.0).schedule()


async def serve(args: argparse.Namespace, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(args), sock=sock, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover
        pass


def run_worker(args: argparse.Namespace, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sock = listener(args.host, args.port)
    try:
        import uvloop
        uvloop.run(serve(args, sock))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args, sock))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="mock")
    p.add_argument("--tokens", type=int, default=64, help="tokens when the request sets no max_tokens")
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus", default="", help="comma-separated cores, worker i on the i-th (round robin)")
    args = p.parse_args()
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    if args.workers <= 1:
        run_worker(args, cpus[0] if cpus else None)
        return
    children = []
    for i in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            die_with_parent()
            run_worker(args, cpus[i % len(cpus)] if cpus else None)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: object) -> None:
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for c in children:
        while True:
            try:
                os.waitpid(c, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    sys.exit(0)


if __name__ == "__main__":
    main()
