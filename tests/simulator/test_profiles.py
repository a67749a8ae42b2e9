from __future__ import annotations

import pytest

from modelyard.simulator.profiles import PROFILES, resolve_profile


def test_every_profile_says_where_its_numbers_come_from() -> None:
    assert "tiny-cpu" in PROFILES and "llama-3.1-8b-h100" in PROFILES
    for profile in PROFILES.values():
        assert len(profile.source) > 40


def test_overrides_are_coerced_from_strings() -> None:
    profile = resolve_profile("tiny-cpu", {"max_num_seqs": "3", "itl_base_s": "0.5", "failure_kinds": "500"})
    assert profile.max_num_seqs == 3 and profile.itl_base_s == 0.5 and profile.kinds() == ("500",)
    assert resolve_profile("tiny-cpu") is PROFILES["tiny-cpu"]


@pytest.mark.parametrize("overrides", [
    {"nope": 1}, {"name": "x"}, {"max_num_seqs": "many"}, {"max_num_seqs": 1.5}, {"failure_rate": 2},
    {"itl_base_s": -1}, {"failure_kinds": "500,teapot"},
])
def test_bad_overrides_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        resolve_profile("tiny-cpu", overrides)


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown simulator profile"):
        resolve_profile("gpt-9")


def test_task_and_embedding_dim() -> None:
    assert resolve_profile("tiny-cpu").task == "chat" and resolve_profile("tiny-cpu").embedding_dim == 384
    profile = resolve_profile("tiny-cpu", {"task": "embedding", "embedding_dim": "1024"})
    assert profile.task == "embedding" and profile.embedding_dim == 1024
    with pytest.raises(ValueError, match="unknown task"):
        resolve_profile("tiny-cpu", {"task": "generate"})
    with pytest.raises(ValueError, match="embedding_dim"):
        resolve_profile("tiny-cpu", {"embedding_dim": 0})
