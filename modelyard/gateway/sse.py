"""The relay's view of an engine's SSE stream: where its events end, how many carried data, and its usage event.

Per read from the engine (`SseUsage.feed`), a few byte searches and no JSON decode: the bytes after the last event
boundary (`\\n\\n` or `\\r\\n\\r\\n`) are held until the rest of that event arrives (complete events are never
held), the `data:` lines of the complete events are counted, and only an event that holds a `"usage"` key whose
value is an object is decoded (orjson), whatever the JSON's spacing or key order. OpenAI's own API sends
`"usage": null` in every chunk: that costs a byte comparison, not a decode. The usage-only event (no choices) that
the gateway asked for on the client's behalf is taken out of the client's stream when the client did not ask for
it.

The count is what the stream is charged when the engine sends no usage (it ignored `stream_options`, or the
stream was cut by the client, the replica or shutdown): each `data:` event but `[DONE]` and the usage-only one,
one completion token each. That is exact for engines that send one token per event (llama.cpp, vLLM unless told
otherwise); an engine that packs several tokens into one event is undercharged, and a role-only first event or a
finish-only last one is charged a token.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

USAGE_KEY = b'"usage"'
BOUNDARIES = (b"\n\n", b"\r\n\r\n")
DONE_ENDS = tuple(b"data:" + space + b"[DONE]" + end for space in (b" ", b"") for end in (b"\n\n", b"\r\n\r\n", b"\n",
                                                                                      b"\r\n", b""))
SPACE = b" \t\r\n"
MAX_HELD = 1 << 20  # the most bytes of one unfinished event held back


def boundary_end(data: bytes, start: int = 0, stop: int | None = None) -> int:
    """The index just after the last event boundary in data[start:stop], or -1 if there is none."""
    stop = len(data) if stop is None else stop
    lf = data.rfind(b"\n\n", start, stop)
    crlf = data.rfind(b"\r\n\r\n", start, stop)
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


def next_boundary(data: bytes, start: int) -> int:
    """The index just after the first event boundary at or after `start`, or len(data) if there is none."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    ends = [i + n for i, n in ((lf, 2), (crlf, 4)) if i >= 0]
    return min(ends) if ends else len(data)


def data_of(event: bytes) -> bytes:
    """The data of one SSE event: its `data:` lines' values joined by newlines (the SSE rules); an answer that is
    not SSE at all (an engine that ignored `stream: true`), whole."""
    lines = [line[5:] for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return event
    return b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)


def data_events(events: bytes) -> int:
    """The `data:` lines in whole events (`events` starts at an event; a raw newline is never inside JSON), but
    `[DONE]`, which ends a stream: nothing comes after it."""
    return events.count(b"\ndata:") + events.startswith(b"data:") - events.endswith(DONE_ENDS)


def is_object_value(data: bytes, key_end: int) -> bool:
    """Whether what follows a key that ends at `key_end` is `: {`, spaces allowed."""
    compact = data[key_end:key_end + 2]
    if compact == b":{" or compact == b":n":  # compact JSON, an object or null: no loop
        return compact == b":{"
    at, size = key_end, len(data)
    while at < size and data[at] in SPACE:
        at += 1
    if at >= size or data[at] != 0x3A:  # ':'
        return False
    at += 1
    while at < size and data[at] in SPACE:
        at += 1
    return at < size and data[at] == 0x7B  # '{'


class SseUsage:
    """One stream's scanner: `feed` each piece the engine sends and relay what it returns; `end` once the engine
    ended the stream cleanly. `usage` is the data of the last event that had a usage object; `events`, the count
    of data events relayed (see the module's doc)."""

    __slots__ = ("keep", "tail", "usage", "events")

    def __init__(self, keep: bool) -> None:
        self.keep = keep  # the client asked for the usage event itself
        self.tail = b""  # the start of an event whose end has not arrived yet
        self.usage = b""
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        held = len(self.tail)
        if held:
            chunk, self.tail = self.tail + chunk, b""
        if not chunk.endswith(BOUNDARIES):
            end = boundary_end(chunk, max(0, held - 3))  # the held part has no boundary of its own
            if end < 0:
                if len(chunk) > MAX_HELD:  # not SSE as it should be: relayed as it comes, not held without end
                    return chunk
                self.tail = chunk
                return b""
            chunk, self.tail = chunk[:end], chunk[end:]
        # _events, inlined: this runs for every piece of every stream
        self.events += chunk.count(b"\ndata:") + chunk.startswith(b"data:") - chunk.endswith(DONE_ENDS)
        if USAGE_KEY in chunk:
            chunk, dropped = self._usage(chunk)
            self.events -= dropped
        return chunk

    def end(self) -> bytes:
        """What is still held (a last event without its blank line), as the client gets it."""
        tail, self.tail = self.tail, b""
        return self._events(tail) if tail else b""

    def _events(self, chunk: bytes) -> bytes:
        count = data_events(chunk)
        if USAGE_KEY in chunk:
            chunk, dropped = self._usage(chunk)
            count -= dropped
        self.events += count
        return chunk

    def _usage(self, chunk: bytes) -> tuple[bytes, int]:
        """The chunk without the usage-only events (unless the client asked for them), and how many were taken."""
        kept: list[bytes] = []
        copied = at = dropped = 0
        taken = False
        while (found := chunk.find(USAGE_KEY, at)) >= 0:
            if not is_object_value(chunk, found + len(USAGE_KEY)):
                at = found + len(USAGE_KEY)
                continue
            start = max(boundary_end(chunk, 0, found), 0)
            end = next_boundary(chunk, found)
            at = end
            data = data_of(chunk[start:end])
            document = _decode(data)
            if document is None or not isinstance(document.get("usage"), dict):
                continue
            self.usage = data
            if not self.keep and not document.get("choices"):
                kept.append(chunk[copied:start])
                copied = end
                dropped += data_events(chunk[start:end])
                taken = True
        if not taken:
            return chunk, 0
        kept.append(chunk[copied:])
        return b"".join(kept), dropped


def _decode(data: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        document = orjson.loads(data)
        return document if isinstance(document, dict) else None
    return None
