"""modelyard/gateway/sse.py: the usage event and the data events of an engine's SSE stream, however the engine
formats its JSON and however the stream is cut into reads."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.gateway.sse import MAX_HELD, SseUsage
from modelyard.gateway.usage import parse_usage

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def event(document: object, spaced: bool = False, crlf: bool = False) -> bytes:
    text = json.dumps(document) if spaced else orjson.dumps(document).decode()  # json.dumps: `"usage": {`
    end = "\r\n\r\n" if crlf else "\n\n"
    return f"data: {text}{end}".encode()


def chunk(text: str, usage_null: bool = False) -> dict[str, object]:
    document: dict[str, object] = {"id": "x", "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage_null:
        document["usage"] = None  # OpenAI's own API, with include_usage: every chunk but the last
    return document


def relay(scanner: SseUsage, reads: list[bytes]) -> bytes:
    return b"".join(scanner.feed(read) for read in reads) + scanner.end()


def test_a_spaced_usage_event_is_found_and_dropped_for_a_client_that_did_not_ask() -> None:
    stream = [event(chunk("a")), event({"id": "x", "choices": [], "usage": USAGE}, spaced=True), b"data: [DONE]\n\n"]
    scanner = SseUsage(keep=False)
    assert relay(scanner, stream) == stream[0] + stream[2]
    assert parse_usage(scanner.usage) == USAGE and scanner.events == 1


def test_a_usage_event_split_across_reads_is_found_and_nothing_complete_is_held() -> None:
    usage = event({"usage": USAGE, "choices": [], "id": "x"})  # another key order
    scanner = SseUsage(keep=False)
    first = event(chunk("a"))
    assert scanner.feed(first + usage[:20]) == first  # the complete event goes at once, the partial one waits
    assert scanner.feed(usage[20:] + b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert parse_usage(scanner.usage) == USAGE


def test_usage_that_comes_with_choices_stays_and_null_usage_is_not_decoded() -> None:
    last = event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": USAGE})
    stream = [event(chunk("a", usage_null=True)), event(chunk("b", usage_null=True), spaced=True), last]
    scanner = SseUsage(keep=False)
    assert relay(scanner, stream) == b"".join(stream)
    assert parse_usage(scanner.usage) == USAGE and scanner.events == 3


def test_text_that_looks_like_the_protocol_is_content() -> None:
    tricky = event(chunk('"usage":{"prompt_tokens": 99} data: x\n\ndata: [DONE]'))
    scanner = SseUsage(keep=False)
    assert relay(scanner, [tricky]) == tricky
    assert scanner.usage == b"" and scanner.events == 1


def test_a_last_event_without_its_blank_line_is_relayed_at_the_end() -> None:
    scanner = SseUsage(keep=True)
    assert scanner.feed(event(chunk("a")) + b"data: [DONE]") == event(chunk("a"))
    assert scanner.end() == b"data: [DONE]" and scanner.events == 1


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bytes, int, bool, bytes]:
    """A valid stream as events, the bytes a client sees, its data events, whether the client keeps usage, and
    the stream cut into reads at arbitrary points."""
    crlf, keep, spaced = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    texts = draw(st.lists(st.text(alphabet=st.sampled_from('ab "\\:{}\n\r\tdata:usage[DONE]é'), max_size=12),
                          max_size=8))
    null = draw(st.booleans())
    events = [event(chunk(text, usage_null=null), spaced=spaced, crlf=crlf) for text in texts]
    visible = list(events)
    with_usage = draw(st.booleans())
    with_choices = False
    if with_usage:
        usage_first, with_choices = draw(st.booleans()), draw(st.booleans())  # llama.cpp: usage on the last token
        choices = [{"index": 0, "text": "", "finish_reason": "length"}] if with_choices else []
        document = {"usage": USAGE, "choices": choices} if usage_first else {"id": "x", "choices": choices,
                                                                             "usage": USAGE}
        usage_event = event(document, spaced=draw(st.booleans()), crlf=crlf)
        events.append(usage_event)
        if keep or with_choices:
            visible.append(usage_event)
    done = b"data: [DONE]\r\n\r\n" if crlf else b"data: [DONE]\n\n"
    events.append(done)
    visible.append(done)
    whole = b"".join(events)
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=10)))
    reads = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    return reads, b"".join(visible), len(texts) + (1 if with_usage and (keep or with_choices) else 0), keep, whole


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy machine
@given(streams())
def test_any_split_into_reads_gives_the_same_usage_and_client_bytes(case: tuple[list[bytes], bytes, int, bool,
                                                                                bytes]) -> None:
    reads, visible, events, keep, whole = case
    split, single = SseUsage(keep), SseUsage(keep)
    assert relay(split, reads) == visible == relay(single, [whole])
    assert split.usage == single.usage
    assert parse_usage(split.usage) == (USAGE if b"total_tokens" in whole else {})
    assert split.events == single.events == events


def test_an_answer_that_is_not_sse_is_relayed_whole_with_its_usage() -> None:
    body = orjson.dumps({"choices": [{"index": 0, "text": "ok"}], "usage": USAGE})
    scanner = SseUsage(keep=False)
    assert scanner.feed(body[:30]) == b"" and scanner.feed(body[30:]) == b""
    assert scanner.end() == body and parse_usage(scanner.usage) == USAGE


def test_an_event_that_never_ends_is_not_held_without_bound() -> None:
    scanner = SseUsage(keep=False)
    piece = b"data: " + b"x" * 65536
    relayed = b""
    for _ in range(40):
        relayed += scanner.feed(piece)
        assert len(scanner.tail) <= MAX_HELD
    assert relayed and relayed + scanner.end() == piece * 40
