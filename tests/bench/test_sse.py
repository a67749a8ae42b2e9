from __future__ import annotations

import orjson

from modelyard.bench.sse import SSEBuffer, parse_event


def _ev(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


STREAM = (
    _ev({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    + _ev({"choices": [{"delta": {"content": "Hel"}}], "usage": None})
    + b": keep-alive\n\n"
    + b'data: {"choices": [{"delta": {"content": "lo \\"x\\""}}]}\r\n\r\n'
    + _ev({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    + _ev({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    + b"data: [DONE]\n\n"
)


def _parse(pieces: list[bytes]) -> list[tuple[bool, object]]:
    buf = SSEBuffer()
    events = [e for p in pieces for e in buf.feed(p)] + buf.flush()
    return [(e.has_content, e.usage) for e in events]


def test_whole_stream() -> None:
    # the comment line is no event; role and finish chunks carry no content
    assert _parse([STREAM]) == [(False, None), (True, None), (True, None), (False, None),
                                (False, {"prompt_tokens": 3, "completion_tokens": 2})]


def test_split_anywhere_gives_the_same_events() -> None:
    whole = _parse([STREAM])
    for size in (1, 3, 7, 50):
        assert _parse([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == whole


def test_completions_text_and_errors() -> None:
    ev = parse_event(b'data: {"choices":[{"text":" a","index":0}]}')
    assert ev is not None and ev.has_content
    ev = parse_event(b'data: {"choices":[{"text":"","index":0}]}')
    assert ev is not None and not ev.has_content
    ev = parse_event(b'data: {"error": {"message": "overloaded"}}')
    assert ev is not None and ev.error == "overloaded"
    assert parse_event(b"data: [DONE]") is None
