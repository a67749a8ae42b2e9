from __future__ import annotations

import pytest

from modelyard.gateway.validate import problem


@pytest.mark.parametrize(("payload", "field"), [
    ({"stream": "yes"}, "stream"), ({"stream": 1}, "stream"), ({"stream_options": "x"}, "stream_options"),
    ({"stream_options": [1]}, "stream_options"), ({"max_tokens": 10**19}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"), ({"temperature": "hot"}, "temperature"),
    ({"user": {}}, "user"), ({"top_n": "2"}, "top_n"),
])
def test_a_field_the_api_does_not_allow_is_named(payload: dict[str, object], field: str) -> None:
    found = problem(payload)
    assert found is not None and found[0] == field


def test_what_the_api_allows_passes() -> None:
    assert problem({"model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 16,
                    "temperature": 0, "top_p": 0.9, "user": "u", "stream_extra": "anything"}) is None
    assert problem({"model": "m", "stream": None, "max_tokens": None}) is None
