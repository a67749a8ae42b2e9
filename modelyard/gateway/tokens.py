"""What a request is reckoned at before the engine says: the tokens its key's limits reserve at admission.

The completion's bound is the larger of `max_tokens` and `max_completion_tokens`, times `n` (or `best_of`, the
choices a legacy completion generates to return `n`): OpenAI's chat endpoint obeys `max_completion_tokens` over
`max_tokens`, its completions endpoint (and vLLM's) only `max_tokens`, other engines either; reserving the larger
bounds the answer whichever one the engine obeys, without rewriting the client's body (an upstream such as OpenAI's
reasoning models refuses `max_tokens`, so the gateway must not add a field the client did not send). Without
either, `DEFAULT_COMPLETION_TOKENS`.

The prompt is estimated from the request body's size (the client's bytes, known without a walk over the
messages). Before the model has answered anything: `FIRST_RATIO` tokens per byte, above what a chat template makes
of a short chat (SmolLM2's, with its default system prompt: 0.33 for "hi") and about twice what byte-level BPE makes
of longer text (one per byte, the safe bound, would refuse many long prompts that a TPM limit fits). Then: the
largest ratio of real prompt tokens to body bytes among the model's last `WINDOW` answers (`PromptEstimates.learn`,
from each usage that an engine reported), so that concurrent requests reserve at least what they will be charged
and a budget is not overshot. The ratio is shared by every key of the model and capped at `MAX_RATIO`. Still an
estimate: a request much smaller than those recently seen, for a model whose template adds many tokens, can be
estimated below its real count (the key is then charged the real count, so only the requests admitted alongside
it can pass the budget). So a key with token limits reserves the prompt's real count instead wherever one is cheap
(the model's tokenizer, the precise router's tokens, the engine's /tokenize: gateway/prompt_count.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

DEFAULT_COMPLETION_TOKENS = 256
MAX_COMPLETION_BOUND = 2**31 - 1  # no context is longer; keeps n x max_tokens far from the limiter's 64-bit counters
WINDOW = 32
FIRST_RATIO = 0.5
MAX_RATIO = 1.0  # what one answer can teach at most: no key can make every other key's requests reserve more
MIN_BASIS = 16  # below this many body bytes a ratio says more about the template than about the prompt


def completion_bound(payload: dict[str, object]) -> int:
    """The most tokens the answer may have: the larger of the two token fields (times `n` or `best_of`), else the
    default; at most `MAX_COMPLETION_BOUND`."""
    bound = max(_counts(payload, "max_tokens", "max_completion_tokens"), default=DEFAULT_COMPLETION_TOKENS)
    return min(bound * max(_counts(payload, "n", "best_of"), default=1), MAX_COMPLETION_BOUND)


def _counts(payload: dict[str, object], *names: str) -> list[int]:
    """The fields that are positive integers (a bool is not one)."""
    return [v for v in map(payload.get, names) if isinstance(v, int) and not isinstance(v, bool) and v > 0]


@dataclass(frozen=True)
class Reservation:
    """The tokens admitted for one request: its prompt's estimate (from `basis` body bytes) and its answer's bound."""

    prompt: int
    completion: int
    basis: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


class PromptEstimates:
    """Per model, the ratio of real prompt tokens to body bytes: the largest of its last `WINDOW` answers."""

    def __init__(self) -> None:
        self._ratios: dict[str, deque[float]] = {}
        self._largest: dict[str, float] = {}

    def estimate(self, model: str, basis: int) -> int:
        return max(1, math.ceil(basis * self._largest.get(model, FIRST_RATIO)))

    def reserve(self, model: str, payload: dict[str, object], body_size: int, generates: bool = True,
                exact: int | None = None) -> Reservation:
        """Embeddings and rerank generate nothing: their prompt only. `exact`: the prompt's real count, where one
        was cheap to get (gateway/prompt_count.py), reserved instead of the estimate."""
        prompt = exact if exact is not None else self.estimate(model, body_size)
        return Reservation(prompt, completion_bound(payload) if generates else 0, body_size)

    def learn(self, model: str, basis: int, prompt_tokens: int) -> None:
        """A real prompt count that an engine reported for a request of `basis` body bytes."""
        if basis < MIN_BASIS or prompt_tokens <= 0:
            return
        ratios = self._ratios.get(model)
        if ratios is None:
            ratios = self._ratios[model] = deque(maxlen=WINDOW)
        ratios.append(min(prompt_tokens / basis, MAX_RATIO))
        self._largest[model] = max(ratios)
