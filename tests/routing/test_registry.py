from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import ValidationError

from modelyard.routing import plugins, registry


def test_every_plugin_module_is_registered_once_with_closed_frozen_params() -> None:
    modules = {m.name for m in pkgutil.iter_modules(plugins.__path__)}
    registered = {p.name for p in registry.PLUGINS}
    assert len(registered) == len(registry.PLUGINS) == len(modules)
    for name in modules:
        module = importlib.import_module(f"modelyard.routing.plugins.{name}")
        assert module.TYPE in registered
        params = module.Params()
        with pytest.raises(ValidationError):
            module.Params.model_validate({"no_such_param": 1})
        assert params.model_config.get("frozen") is True


def test_types_may_carry_their_kind_as_a_suffix() -> None:
    assert registry.plugin_type("prefix-affinity-scorer") is registry.PLUGIN_TYPES["prefix-affinity"]
    assert registry.plugin_type("saturation-filter") is registry.PLUGIN_TYPES["saturation-filter"]
    assert registry.plugin_type("prefix-affinity-picker") is None
    assert registry.plugin_type("nope") is None


def test_builtin_profiles_wire_plugins_of_the_right_kind() -> None:
    names = {p.name for p in registry.BUILTIN_PROFILES}
    assert {"default", "round-robin", "least-load", "random", "session"} <= names
    for profile in registry.BUILTIN_PROFILES:
        assert all(registry.PLUGIN_TYPES[f].kind == "filter" for f in profile.filters)
        assert all(registry.PLUGIN_TYPES[s.plugin].kind == "scorer" for s in profile.scorers)
        assert registry.PLUGIN_TYPES[profile.picker].kind == "picker"
