from __future__ import annotations

import pytest

from modelyard.bench.targets import TargetError, parse_models, parse_target, parse_targets


def test_target_forms() -> None:
    t = parse_target("http://127.0.0.1:8080/v1/", None, env={})
    assert (t.name, t.base_url, t.api_key) == ("127.0.0.1:8080", "http://127.0.0.1:8080/v1", None)
    t = parse_target("gw=http://h:1/v1@KEYVAR", "default", env={"KEYVAR": "sk-1"})
    assert (t.name, t.api_key) == ("gw", "sk-1") and t.headers()["Authorization"] == "Bearer sk-1"
    assert parse_target("d=http://h:1/v1", "default", env={}).api_key == "default"
    assert parse_target("http://h:1/v1", None, env={}).url("chat/completions") == "http://h:1/v1/chat/completions"


def test_target_errors() -> None:
    with pytest.raises(TargetError, match="MISSING"):
        parse_target("a=http://h/v1@MISSING", None, env={})
    with pytest.raises(TargetError):
        parse_target("a=ftp://h/v1", None, env={})
    with pytest.raises(TargetError, match="differ"):
        parse_targets(("a=http://h/v1", "a=http://g/v1"), None, env={})


def test_models() -> None:
    targets = parse_targets(("a=http://h/v1", "b=http://g/v1"), None, env={})
    assert parse_models(("m",), targets) == {"a": "m", "b": "m"}
    assert parse_models(("b=alias", "m"), targets) == {"a": "m", "b": "alias"}
