"""The `routing:` section of yard.yaml and models' `routing:` profile names: errors name the path and line."""

from __future__ import annotations

from modelyard.spec import parse_spec
from tests.spec.test_loader import problems

SPEC = """\
routing:
  plugins:
    - {name: sat, type: saturation-filter, params: {max_waiting: 4, max_kv_usage: 0.9}}
    - {name: prefix, type: prefix-affinity-scorer, params: {block_chars: 64, capacity_blocks: 20000}}
  profiles:
    - name: my-profile
      filters: [ready, sat]
      scorers: [{plugin: prefix, weight: 3}, {plugin: load, weight: 1}]
      picker: max-score
models:
  - name: sim
    engine: openai
    urls: [http://127.0.0.1:9000, http://127.0.0.2:9000]
    replicas: 2
    routing: my-profile
  - name: other
    engine: simulator
"""


def test_the_agreed_format_loads_and_models_default_to_the_default_profile() -> None:
    spec = parse_spec(SPEC)
    assert spec.routing.plugins[1].type == "prefix-affinity-scorer"
    assert spec.routing.profiles[0].scorers[0].weight == 3
    sim, other = spec.models
    assert sim.routing == "my-profile" and other.routing == "default"


def test_builtin_profiles_need_no_routing_section() -> None:
    for name in ("default", "round-robin", "least-load", "random", "session"):
        parse_spec(f"models:\n  - {{name: m, engine: simulator, routing: {name}}}\n")


def test_scorers_may_be_bare_names() -> None:
    spec = parse_spec(SPEC.replace("[{plugin: prefix, weight: 3}, {plugin: load, weight: 1}]", "[prefix, load]"))
    assert [(s.plugin, s.weight) for s in spec.routing.profiles[0].scorers] == [("prefix", 1.0), ("load", 1.0)]


def test_unknown_plugin_in_a_profile_suggests_the_close_one() -> None:
    text = SPEC.replace("{plugin: load, weight: 1}", "{plugin: prefx, weight: 1}")
    assert problems(text) == [
        "routing.profiles[0].scorers[1].plugin: unknown plugin 'prefx' (did you mean 'prefix'?) (yard.yaml:8)"]


def test_plugin_of_the_wrong_kind() -> None:
    assert problems(SPEC.replace("picker: max-score", "picker: sat")) == [
        "routing.profiles[0].picker: 'sat' is a filter, not a picker (yard.yaml:9)"]
    assert problems(SPEC.replace("filters: [ready, sat]", "filters: [ready, load]")) == [
        "routing.profiles[0].filters[1]: 'load' is a scorer, not a filter (yard.yaml:7)"]


def test_unknown_profile_on_a_model() -> None:
    assert problems(SPEC.replace("routing: my-profile", "routing: my-profil")) == [
        "models[0].routing: unknown profile 'my-profil' (did you mean 'my-profile'?) (yard.yaml:15)"]


def test_unknown_type_and_bad_params_name_the_path() -> None:
    text = SPEC.replace("type: saturation-filter", "type: saturaton-filter").replace("block_chars: 64",
                                                                                      "block_chars: 2")
    assert problems(text) == [
        "routing.plugins[0].type: unknown plugin type 'saturaton-filter' (did you mean 'saturation-filter'?) "
        "(yard.yaml:3)",
        "routing.plugins[1].params.block_chars: must be >= 8 (yard.yaml:4)",
    ]


def test_param_errors() -> None:
    assert problems(SPEC.replace("max_waiting: 4", "max_waiting: -1")) == [
        "routing.plugins[0].params.max_waiting: must be >= 0 (yard.yaml:3)"]
    assert problems(SPEC.replace("max_waiting: 4", "max_wait: 4")) == [
        "routing.plugins[0].params.max_wait: is not a parameter of saturation-filter "
        "(did you mean 'max_waiting'?) (yard.yaml:3)"]
    assert problems(SPEC.replace("max_kv_usage: 0.9", "max_kv_usage: lots")) == [
        "routing.plugins[0].params.max_kv_usage: must be a number (yard.yaml:3)"]


def test_weights_names_and_duplicates() -> None:
    assert problems(SPEC.replace("weight: 3", "weight: 0")) == [
        "routing.profiles[0].scorers[0].weight: must be > 0.0 (yard.yaml:8)"]
    twice = SPEC.replace("name: prefix, type", "name: sat, type").replace("plugin: prefix", "plugin: sat")
    assert "routing.plugins[1].name: 'sat' is already used by routing.plugins[0] (yard.yaml:4)" in problems(twice)
    clash = SPEC.replace("name: sat, type: saturation-filter", "name: load, type: saturation-filter")
    assert ("routing.plugins[0].name: 'load' is the built-in scorer; a filter needs another name (yard.yaml:3)"
            in problems(clash))


def test_a_declared_instance_may_retune_a_builtin_one() -> None:
    text = ("routing:\n  plugins:\n    - {name: saturation-filter, type: saturation-filter, params: {max_waiting: 1}}"
            "\nmodels:\n  - {name: m, engine: simulator}\n")
    assert parse_spec(text).routing.plugins[0].params == {"max_waiting": 1}
