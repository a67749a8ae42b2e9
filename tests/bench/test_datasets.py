from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.bench import datasets
from modelyard.bench.datasets import LengthSpec, SharedPrefixSpec
from modelyard.bench.records import Prompt


def test_mtbench_first_turns() -> None:
    prompts = datasets.mtbench(max_tokens=64)
    assert len(prompts) == 80
    assert all(len(p.messages) == 1 and p.messages[0]["role"] == "user" for p in prompts)
    assert prompts[0].messages[0]["content"].startswith("Compose an engaging travel blog post")
    assert {p.group for p in prompts} >= {"writing", "coding", "math"}
    assert all(p.max_tokens == 64 for p in prompts)


def test_random_lengths() -> None:
    prompts = datasets.random_prompts(200, LengthSpec(100, 0.5), LengthSpec(20, 0.0), seed=3)
    lengths = [p.prompt_tokens_estimate for p in prompts]
    assert min(lengths) >= 50 and max(lengths) <= 150 and len(set(lengths)) > 20
    assert all(len(p.messages[0]["content"].split()) == p.prompt_tokens_estimate for p in prompts)
    assert {p.max_tokens for p in prompts} == {20}
    again = datasets.random_prompts(200, LengthSpec(100, 0.5), LengthSpec(20, 0.0), seed=3)
    assert again == prompts


def test_shared_prefix_structure() -> None:
    spec = SharedPrefixSpec(groups=3, system_tokens=200, conversations_per_group=4, turns=2, question_tokens=10,
                            answer_tokens=15, output_len=16)
    prompts = datasets.shared_prefix(spec, seed=1)
    assert len(prompts) == 3 * 4 * 2
    by_group: dict[str, set[str]] = {}
    for p in prompts:
        assert p.messages[0]["role"] == "system"
        by_group.setdefault(p.group, set()).add(p.messages[0]["content"])
    assert sorted(by_group) == ["g0", "g1", "g2"]
    assert all(len(systems) == 1 for systems in by_group.values())  # one shared system prompt per group
    assert len({next(iter(s)) for s in by_group.values()}) == 3
    first, second = prompts[:12], prompts[12:]
    assert all(len(p.messages) == 2 for p in first) and all(len(p.messages) == 4 for p in second)
    for a, b in zip(first, second, strict=True):  # the second turn extends the first: a growing conversation
        assert b.messages[:2] == a.messages and b.messages[2]["role"] == "assistant"
    assert len({p.messages[1]["content"] for p in first}) == 12  # different questions
    assert prompts[0].group != prompts[1].group  # groups interleave


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi there"}\n\n{"messages": [{"role": "user", "content": "x"}], "max_tokens": 9}\n'
                    '{"turns": ["a", "b"]}\n')
    prompts = datasets.jsonl(path, max_tokens=32)
    assert [p.messages[-1]["content"] for p in prompts] == ["hi there", "x", "a"]
    assert [p.max_tokens for p in prompts] == [32, 9, 32]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nothing": 1}\n')
    with pytest.raises(datasets.DatasetError, match="bad.jsonl:1"):
        datasets.jsonl(bad)


def test_cycle() -> None:
    prompts = datasets.mtbench()[:3]
    assert datasets.cycle(prompts, 7) == prompts * 2 + prompts[:1]


def _texts(n: int) -> list[Prompt]:
    return [Prompt(messages=({"role": "user", "content": f"w{i} " * (i + 1)},), max_tokens=1,
                   prompt_tokens_estimate=i + 1, group=f"g{i}") for i in range(n)]


def test_embedding_batches_take_texts_in_order() -> None:
    batches = datasets.batches(_texts(5), n=3, per_request=2)
    assert [len(b.texts) for b in batches] == [2, 2, 2] and all(b.query == "" for b in batches)
    assert [b.texts[0].split()[0] for b in batches] == ["w0", "w2", "w4"]
    assert batches[2].texts[1].split()[0] == "w0"  # the dataset repeats when short
    assert [b.prompt_tokens_estimate for b in batches] == [1 + 2, 3 + 4, 5 + 1]
    assert [b.group for b in batches] == ["g0", "g2", "g4"]


def test_rerank_batches_have_a_query_and_documents() -> None:
    batches = datasets.batches(_texts(8), n=2, per_request=3, query=True)
    assert [b.query.split()[0] for b in batches] == ["w0", "w4"]
    assert [d.split()[0] for d in batches[1].texts] == ["w5", "w6", "w7"]
    assert batches[0].prompt_tokens_estimate == (1 + 2) + (1 + 3) + (1 + 4)  # the query counts with each document
    with pytest.raises(datasets.DatasetError):
        datasets.batches(_texts(2), n=1, per_request=0)
