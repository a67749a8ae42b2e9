"""One Service name per model, the same for the renderer and the gateway's discovery."""

from __future__ import annotations

import re

import pytest

from modelyard.spec.names import service_name

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_a_dns_safe_name_keeps_its_spelling() -> None:
    assert service_name("chat") == "modelyard-chat"
    assert service_name("llama-3-8b") == "modelyard-llama-3-8b"


@pytest.mark.parametrize("name", ["Qwen/Qwen3-8B", "qwen2.5", "a:b", "x" * 128, "UPPER", "9lives", "-", "a..b"])
def test_any_model_name_gives_a_valid_service_name(name: str) -> None:
    got = service_name(name)
    assert DNS_1035.match(got) and len(got) <= 63, got
    assert service_name(name) == got  # the renderer and the gateway compute the same one


def test_names_that_spell_alike_get_different_services() -> None:
    names = ["chat", "Chat", "CHAT", "qwen2.5", "qwen2-5", "qwen2_5", "x" * 100, "x" * 101]
    assert len({service_name(n) for n in names}) == len(names)
