from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# A non-empty string value for a field that carries generated text. Inside a JSON string a quote is escaped,
# so these patterns cannot match text the model generated.
_CONTENT = re.compile(rb'"(?:content|text|reasoning_content|reasoning)"\s*:\s*"(?!")')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ERROR = re.compile(rb'"error"\s*:\s*[\{"]')


@dataclass
class SSEEvent:
    has_content: bool
    usage: dict[str, Any] | None
    error: str


class SSEBuffer:
    """Splits a byte stream into SSE events on blank lines; decodes JSON only for usage or error events."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[SSEEvent]:
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        events = []
        for part in parts:
            event = parse_event(part)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        rest, self._buf = self._buf, b""
        event = parse_event(rest)
        return [event] if event is not None else []


def _data_of(raw: bytes) -> bytes:
    if raw.startswith(b"data:") and b"\n" not in raw:
        return raw[5:].strip()
    lines = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def parse_event(raw: bytes) -> SSEEvent | None:
    data = _data_of(raw.strip())
    if not data or data == b"[DONE]":
        return None
    usage: dict[str, Any] | None = None
    error = ""
    if _USAGE.search(data) is not None:
        usage = _decode(data).get("usage") or None
    if _ERROR.search(data) is not None:
        err = _decode(data).get("error")
        if err:
            error = str(err.get("message", err) if isinstance(err, dict) else err)
    return SSEEvent(has_content=_CONTENT.search(data) is not None, usage=usage, error=error)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
