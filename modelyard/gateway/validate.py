"""The fields of a request that the gateway reads or forwards and that a client can get wrong: checked at the door,
a 400 naming the field, before any limit, queue or engine sees them (a string `stream`, a `max_tokens` of 10**19
that would overflow the limiter, a `stream_options` that is not an object)."""

from __future__ import annotations

from typing import Any

MAX_TOKENS_BOUND = 2**31 - 1
INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "top_n", "dimensions")
NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def problem(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(field, what is wrong) for the first field that is not as the API says, else None."""
    for name in ("stream",):
        if name in payload and not isinstance(payload[name], bool) and payload[name] is not None:
            return name, f"{name} must be true or false"
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return "stream_options", "stream_options must be an object"
    for name in INT_FIELDS:
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= MAX_TOKENS_BOUND):
            return name, f"{name} must be an integer from 0 to {MAX_TOKENS_BOUND}"
    for name in NUMBER_FIELDS:
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return name, f"{name} must be a number"
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        return "user", "user must be a string"
    return None
