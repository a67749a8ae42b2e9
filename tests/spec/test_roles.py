"""`roles:` of a model (spec/roles.py): prefill and decode replicas, and the errors that name the path."""

from __future__ import annotations

import pytest

from modelyard.spec.loader import parse_spec
from tests.spec.test_loader import problems


def spec(model: str) -> str:
    return "models:\n  - name: m\n" + "".join(f"    {line}\n" for line in model.strip().splitlines())


def test_roles_give_the_replicas_prefill_first() -> None:
    model = parse_spec(spec("engine: simulator\nroles: {prefill: 2, decode: 3}")).models[0]
    assert model.roles is not None and model.roles.decode_routing == "least-load"
    assert (model.min_replicas, model.max_replicas, model.scaling) == (5, 5, None)
    assert [model.role_of(i) for i in range(6)] == ["prefill", "prefill", "decode", "decode", "decode", "decode"]
    assert parse_spec(spec("engine: simulator\nreplicas: 2\nroles: {prefill: 1, decode: 1}")).models[0].replicas == 2
    assert parse_spec(spec("engine: simulator")).models[0].role_of(0) is None


def test_vllm_can_have_roles() -> None:
    model = parse_spec(spec("engine: vllm\nmodel: {path: /w}\nroles: {prefill: 1, decode: 1, "
                            "decode_routing: round-robin}")).models[0]
    assert model.roles is not None and model.roles.decode_routing == "round-robin"


@pytest.mark.parametrize(("model", "expected"), [
    ("engine: simulator\nreplicas: 4\nroles: {prefill: 2, decode: 1}",
     "models[0]: roles: prefill 2 + decode 1 replicas, but replicas is 4 (leave replicas out)"),
    ("engine: simulator\nreplicas: {min: 1, max: 3}\nroles: {prefill: 2, decode: 1}",
     "models[0]: roles: a model with roles has a fixed number of replicas"),
    ("engine: simulator\nroles: {prefill: 0, decode: 1}", "models[0].roles.prefill: must be >= 1"),
    ("engine: simulator\nroles: {prefill: 1}", "models[0].roles.decode: is required"),
    ("engine: simulator\nroles: {prefill: 1, decode: 1, both: 1}", "models[0].roles.both: is not a known field"),
    ("engine: llamacpp\nmodel: {path: /x.gguf}\nroles: {prefill: 1, decode: 1}",
     "models[0].roles: engine llamacpp cannot split prefill and decode (engines that can: simulator, vllm)"),
    ("engine: sglang\nmodel: {path: /w}\nroles: {prefill: 1, decode: 1}",
     "models[0].roles: engine sglang cannot split prefill and decode"),
    ("engine: simulator\ntask: embedding\nroles: {prefill: 1, decode: 1}",
     "models[0].roles: roles are for chat models (task embedding has no decode"),
    ("engine: simulator\nroles: {prefill: 1, decode: 1, decode_routing: lest-load}",
     "models[0].roles.decode_routing: unknown profile 'lest-load'"),
])
def test_bad_roles_name_the_path(model: str, expected: str) -> None:
    found = problems(spec(model))
    assert any(p.startswith(expected) for p in found), found
