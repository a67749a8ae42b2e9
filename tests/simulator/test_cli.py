from __future__ import annotations

import pytest
from click.testing import CliRunner

from modelyard.simulator import run
from modelyard.simulator.cli import simulate
from modelyard.simulator.profiles import Profile


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Profile]:
    profiles: list[Profile] = []
    monkeypatch.setattr(run, "serve", lambda profile, *args: profiles.append(profile))
    return profiles


@pytest.mark.parametrize(("args", "task"), [
    ([], "chat"), (["--task", "embedding"], "embedding"), (["--param", "task=rerank"], "rerank"),
    (["--task", "rerank", "--param", "task=rerank"], "rerank"),
])
def test_task_from_the_flag_or_a_param(served: list[Profile], args: list[str], task: str) -> None:
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    assert [p.task for p in served] == [task]


@pytest.mark.parametrize("args", [["--task", "generate"], ["--task", "chat", "--param", "task=embedding"],
                                  ["--param", "task=nope"], ["--param", "embedding_dim=0"]])
def test_bad_tasks_are_refused(served: list[Profile], args: list[str]) -> None:
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2 and not served
