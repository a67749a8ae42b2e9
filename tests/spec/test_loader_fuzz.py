"""hypothesis on the yard.yaml loader: any document gives either a spec or a SpecError whose every problem names a
path and where it is (the file, and the line where known), never another exception."""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.spec.loader import SpecError, parse_spec
from tests.campaign import record, scale

# "<path>: <what> (yard.yaml:<line>)"; a path is "(top level)" or starts with a name or a quoted key, never blank
PROBLEM = re.compile(r"^(not valid YAML: |\(top level\): |[^\s:]).*: .+ \(yard\.yaml(:\d+)?\)$", re.DOTALL)
VALID: dict[str, Any] = {
    "version": 1, "state_dir": ".modelyard",
    "gateway": {"host": "127.0.0.1", "port": 8080, "workers": 2, "keys": [{"name": "team-a", "key_env": "TEAM_A"}]},
    "store": {"usage_flush_interval_s": 1.0},
    "routing": {"plugins": [{"name": "load", "type": "load"}],
                "profiles": [{"name": "p", "scorers": [{"plugin": "load", "weight": 1}]}]},
    "models": [
        {"name": "chat", "engine": "simulator", "replicas": {"min": 1, "max": 3}, "routing": "p",
         "params": {"itl_base_s": 0.01}, "timeouts": {"first_byte_s": 5, "total_s": 60},
         "admission": {"max_queue": 10, "max_wait_s": 5}, "slo": {"ttft_p90_s": 1.0}},
        {"name": "minilm", "engine": "llamacpp", "task": "embedding", "model": {"path": "/m.gguf"}, "replicas": 1},
        {"name": "ext", "engine": "openai", "urls": ["http://127.0.0.1:9"], "api_key_env": "K"},
        {"name": "big", "engine": "vllm", "model": {"path": "/w"}},
    ],
}
EXAMPLES = 300  # per property (x MODELYARD_CAMPAIGN_SCALE in benchmarks/chaos.sh)
SETTINGS = settings(max_examples=EXAMPLES * scale(), deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                     max_leaves=30)


def check(text: str) -> None:
    try:
        parse_spec(text)
    except SpecError as exc:
        assert exc.problems, "a SpecError with no problem"
        for problem in exc.problems:
            assert PROBLEM.match(problem), problem


def paths(tree: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += paths(value, at + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += paths(value, at + (index,))
    return found


def replaced(tree: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    head, rest = at[0], at[1:]
    if isinstance(tree, dict):
        return {**tree, head: replaced(tree[head], rest, value)}
    return [replaced(item, rest, value) if i == head else item for i, item in enumerate(tree)]


@SETTINGS
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


@SETTINGS
@given(trees)
def test_any_yaml_document(tree: Any) -> None:
    check(yaml.safe_dump(tree))
    check(yaml.safe_dump({"version": 1, "models": tree}))


@SETTINGS
@given(st.data())
def test_a_valid_spec_with_any_part_replaced(data: st.DataObject) -> None:
    at = data.draw(st.sampled_from(paths(VALID)))
    check(yaml.safe_dump(replaced(VALID, at, data.draw(trees))))


def test_the_valid_spec_is_valid() -> None:
    assert [m.name for m in parse_spec(yaml.safe_dump(VALID)).models] == ["chat", "minilm", "ext", "big"]


def test_nesting_deeper_than_the_parser_goes_is_a_spec_error() -> None:
    check("[" * 5000 + "]" * 5000)  # was a RecursionError out of PyYAML
    check("models: " + "[" * 3000 + "]" * 3000)
    check("models: [{name: m, engine: simulator, params: " + "{a: " * 2000 + "1" + "}" * 2000 + "}]")
    # the three properties above ran (at most: hypothesis stops where it has tried every input) this many documents
    record("loader_fuzz", {"cases": 4 * EXAMPLES * scale() + 3, "other_exceptions": 0})
