"""modelyard/gateway/tokens.py: what admission reserves for a request."""

from __future__ import annotations

from modelyard.gateway.tokens import DEFAULT_COMPLETION_TOKENS, PromptEstimates, completion_bound


def test_the_completion_bound_is_the_larger_token_field_times_n() -> None:
    assert completion_bound({"max_completion_tokens": 1, "max_tokens": 1000}) == 1000
    assert completion_bound({"max_tokens": 1, "max_completion_tokens": 1000}) == 1000
    assert completion_bound({"max_tokens": 40, "n": 10}) == 400
    assert completion_bound({"max_tokens": 40, "n": 2, "best_of": 5}) == 200
    assert completion_bound({}) == completion_bound({"max_tokens": 0}) == DEFAULT_COMPLETION_TOKENS
    assert completion_bound({"max_tokens": True, "n": True}) == DEFAULT_COMPLETION_TOKENS
    # two such reservations would overflow Redis's 64-bit INCRBY (a 503 instead of a 429)
    assert completion_bound({"max_tokens": 2**31 - 1, "n": 2**31 - 1}) == 2**31 - 1


def test_the_prompt_is_estimated_from_the_largest_ratio_the_engine_counted() -> None:
    estimates = PromptEstimates()
    assert estimates.estimate("m", 200) == 100  # half a token per body byte
    estimates.learn("m", 200, 60)
    estimates.learn("m", 400, 80)
    assert estimates.estimate("m", 200) == 60  # the largest ratio seen: 0.3 token per byte
    assert estimates.estimate("other", 200) == 100
    reservation = estimates.reserve("m", {"max_tokens": 10}, 100)
    assert (reservation.prompt, reservation.completion, reservation.total) == (30, 10, 40)
    assert estimates.reserve("m", {"max_tokens": 10}, 100, generates=False).total == 30


def test_one_answer_cannot_raise_the_estimate_past_one_token_per_byte() -> None:
    estimates = PromptEstimates()
    estimates.learn("m", 100, 10_000)
    assert estimates.estimate("m", 100) == 100
