from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from modelyard.spec import SpecError, parse_spec
from modelyard.spec.validation import (
    ChatEntry,
    EmbeddingEntry,
    Expect,
    GoldenError,
    NumberCheck,
    RerankEntry,
    answer_problem,
    load_golden,
    schema_problem,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "golden"


def spec_with(validation: str) -> str:
    return textwrap.dedent("""\
        models:
          - name: chat
            engine: simulator
            validation:
        """) + textwrap.indent(textwrap.dedent(validation), "      ")


def test_validation_parses_with_its_defaults() -> None:
    spec = parse_spec(spec_with("""\
        quality: {golden: golden/chat.yaml, min_pass_rate: 0.95}
        determinism: {prompts: 20, repeats: 5, concurrent: 8, min_identical: 0.9}
        speed: {ttft_p90_s: 2.0, tpot_p90_s: 0.1, max_slowdown: 0.10}
        """))
    validation = spec.models[0].validation
    assert validation is not None and validation.quality is not None and validation.determinism is not None
    assert validation.quality.golden == "golden/chat.yaml" and validation.quality.min_pass_rate == 0.95
    assert (validation.determinism.prompts, validation.determinism.max_tokens) == (20, 32)
    assert validation.speed is not None and validation.speed.max_slowdown == 0.10
    assert (validation.speed.requests, validation.speed.concurrency) == (20, 2)
    assert parse_spec("models: [{name: m, engine: simulator}]").models[0].validation is None


def test_validation_errors_name_the_path_and_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with("""\
            quality: {golden: g.yaml, min_pass_rate: 0}
            determinism: {min_identical: 1.5}
            speed: {max_slowdwn: 0.1}
            """))
    problems = "\n".join(info.value.problems)
    assert "models[0].validation.quality.min_pass_rate: must be > 0.0 (yard.yaml:5)" in problems
    assert "models[0].validation.determinism.min_identical: must be <= 1.0 (yard.yaml:6)" in problems
    assert "models[0].validation.speed.max_slowdwn: is not a known field (did you mean 'max_slowdown'?)" in problems
    with pytest.raises(SpecError, match="validation.quality.golden: is required"):
        parse_spec(spec_with("quality: {min_pass_rate: 0.5}\n"))


def test_the_examples_load() -> None:
    chat = load_golden(EXAMPLES / "chat.yaml", "chat")
    assert len(chat.entries) == 5 and all(isinstance(e, ChatEntry) for e in chat.entries)
    assert {e.name for e in chat.entries} >= {"arithmetic", "greeting", "json"}
    minilm = load_golden(EXAMPLES / "minilm.yaml", "embedding")
    assert minilm.entries and all(isinstance(e, EmbeddingEntry) for e in minilm.entries)


def test_jsonl_golden_sets_load_one_entry_a_line(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"query": "cats", "documents": ["dogs", "cats"], "top": 1}\n\n'
                    '{"query": "q", "documents": ["a", "b", "c"], "top": 0}\n')
    golden = load_golden(path, "rerank")
    assert [e.top for e in golden.entries if isinstance(e, RerankEntry)] == [1, 0]


def golden_problems(tmp_path: Path, text: str, task: str = "chat", name: str = "g.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    with pytest.raises(GoldenError) as info:
        load_golden(path, task)
    return info.value.problems


def test_an_unknown_check_names_the_file_line_entry_and_field(tmp_path: Path) -> None:
    problems = golden_problems(tmp_path, """\
        - prompt: "Hi"
          expect: {contains: "Hello"}
        - prompt: "2+2?"
          expect: {colour: blue}
        """)
    assert problems == [f"{tmp_path / 'g.yaml'}:3: entries[1].expect.colour: unknown check (known: contains, "
                        "not_contains, regex, exact, json_schema, number, and ignore_case)"]


def test_every_bad_entry_is_reported(tmp_path: Path) -> None:
    problems = golden_problems(tmp_path, """\
        - {prompt: "a", expect: {regex: "(unclosed"}}
        - {prompt: "b"}
        - {prompt: "c", messages: [{role: user, content: c}], expect: {exact: c}}
        - {prompt: "d", expect: {}}
        - {prompt: "e", expect: {json_schema: {type: object, oneOf: []}}}
        - {pair: [a, b], closer_than: [c, d]}
        - just a string
        - {prompt: "h", max_tokens: 0, expect: {number: {value: 1, tolerance: -1}}}
        """)
    text = "\n".join(problems)
    assert "g.yaml:1: entries[0].expect.regex: not a valid regular expression" in text
    assert "g.yaml:2: entries[1].expect: is required" in text
    assert "g.yaml:3: entries[2]: give exactly one of prompt or messages" in text
    assert "g.yaml:4: entries[3].expect: give at least one check" in text
    assert "g.yaml:5: entries[4].expect.json_schema: json_schema.oneOf: not a supported JSON Schema keyword" in text
    assert "g.yaml:6: entries[5]: an embedding entry (pair and closer_than) in the golden set of a chat model" in text
    assert "g.yaml:7: entries[6]: must be a mapping" in text
    assert "g.yaml:8: entries[7].max_tokens: must be >= 1" in text
    assert "g.yaml:8: entries[7].expect.number.tolerance: must be >= 0" in text


def test_embedding_and_rerank_entries_are_checked(tmp_path: Path) -> None:
    problems = golden_problems(tmp_path, """\
        - {pair: [a], closer_than: [c, d]}
        - {pair: [a, b], closer_than: [c, d], extra: 1}
        """, task="embedding")
    assert problems[0] == f"{tmp_path / 'g.yaml'}:1: entries[0].pair: must be two texts, not 1"
    assert problems[1].endswith("entries[1].extra: is not a known field")
    problems = golden_problems(tmp_path, "- {query: q, documents: [a, b], top: 2}\n", task="rerank")
    assert problems == [f"{tmp_path / 'g.yaml'}:1: entries[0]: top: must be an index of documents (0 to 1)"]


def test_files_that_do_not_parse_are_errors_naming_the_file(tmp_path: Path) -> None:
    assert golden_problems(tmp_path, "- {prompt: [unclosed\n")[0].startswith(f"{tmp_path / 'g.yaml'}:")
    assert "not valid YAML" in golden_problems(tmp_path, "- {prompt: [unclosed\n")[0]
    assert golden_problems(tmp_path, "prompt: hi\n") == [f"{tmp_path / 'g.yaml'}: must be a list of entries"]
    assert golden_problems(tmp_path, "[]\n") == [f"{tmp_path / 'g.yaml'}: has no entries"]
    jsonl = golden_problems(tmp_path, '{"prompt": "a", "expect": {"exact": "a"}}\n{"prompt": \n', name="g.jsonl")
    assert jsonl[0].startswith(f"{tmp_path / 'g.jsonl'}:2: not valid JSON")
    assert golden_problems(tmp_path, "x", name="g.txt") == [f"{tmp_path / 'g.txt'}: a golden file is .yaml, .yml "
                                                            "or .jsonl"]
    with pytest.raises(GoldenError, match="no such golden file"):
        load_golden(tmp_path / "missing.yaml", "chat")


def test_text_checks() -> None:
    assert answer_problem(Expect(contains="Paris"), "It is Paris.") is None
    assert answer_problem(Expect(contains=("Paris", "France")), "Paris") == "contains: 'France' is not in the answer"
    assert answer_problem(Expect(contains="paris", ignore_case=True), "PARIS") is None
    assert answer_problem(Expect(not_contains="<|im_end|>"), "ok<|im_end|>") == "not_contains: '<|im_end|>' is in " \
                                                                                  "the answer"
    assert answer_problem(Expect(regex=r"\bhel+o\b", ignore_case=True), "Well, HELLO there") is None
    assert answer_problem(Expect(regex=r"^\d+$"), "four") == r"regex: '^\\d+$' does not match"
    assert answer_problem(Expect(exact="Paris"), "  Paris\n") is None
    assert answer_problem(Expect(exact="Paris"), "Paris.") == "exact: the answer is not 'Paris'"


def test_every_check_given_must_pass() -> None:
    expect = Expect(contains="4", not_contains="5", regex="four|4")
    assert answer_problem(expect, "2+2 is 4") is None
    assert answer_problem(expect, "2+2 is 4, not 5") == "not_contains: '5' is in the answer"


def test_number_checks() -> None:
    assert answer_problem(Expect(number=NumberCheck(value=4)), "2 + 2 = 4.") is None
    assert answer_problem(Expect(number=NumberCheck(value=4, pick="first")), "2 + 2 = 4.") is not None
    assert answer_problem(Expect(number=NumberCheck(value=4, pick="last")), "2 + 2 = 4.") is None
    assert answer_problem(Expect(number=NumberCheck(value=3.14, tolerance=0.01)), "pi is about 3.1416") is None
    assert answer_problem(Expect(number=NumberCheck(value=1000)), "1,000 people") is None
    assert answer_problem(Expect(number=NumberCheck(value=-2)), "minus: -2") is None
    assert answer_problem(Expect(number=NumberCheck(value=4)), "four") == "number: the answer has no number"


def test_json_schema_checks() -> None:
    schema = {"type": "object", "required": ["name"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}}
    expect = Expect(json_schema=schema)
    assert answer_problem(expect, '{"name": "Ada", "age": 36}') is None
    assert answer_problem(expect, '```json\n{"name": "Ada"}\n```') is None
    assert answer_problem(expect, "Ada") == "json_schema: the answer is not JSON"
    assert answer_problem(expect, '{"age": 3}') == "json_schema: $: has no 'name'"
    assert answer_problem(expect, '{"name": "Ada", "age": -1}') == "json_schema: $.age: -1 is out of range"
    assert answer_problem(expect, '{"name": "Ada", "x": 1}') == ("json_schema: $: has 'x', which the schema does "
                                                                 "not allow")
    listing = {"type": "array", "minItems": 2, "items": {"enum": ["a", "b"]}}
    assert schema_problem(listing, ["a", "b"]) is None
    assert schema_problem(listing, ["a"]) == "$: has 1 items"
    assert schema_problem(listing, ["a", "c"]) == "$[1]: is not one of ['a', 'b']"
    assert schema_problem({"type": ["string", "null"]}, None) is None
    assert schema_problem({"type": "number"}, True) == "$: is not of type number"
