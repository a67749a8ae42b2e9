"""Every routing plugin type, in one explicit list, and the built-in plugin instances and profiles.

A plugin type is one module under plugins/ with TYPE, KIND, Params and create(params, context). Built-in instances
exist for every type, named by the type, with default params; a `routing.plugins` entry of the same name replaces
one (in the built-in profiles too). A type may be written with its kind as a suffix (`prefix-affinity-scorer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from modelyard.routing.contracts import Context, PluginParams
from modelyard.routing.plugins import (
    least_inflight,
    load,
    max_score,
    power_of_two,
    precise_prefix,
    prefix_affinity,
    random_pick,
    ready,
    round_robin,
    saturation_filter,
    session_affinity,
)
from modelyard.spec.schema import BaseModelSpec, ProfileSpec, RoutingSpec, ScorerRef

Kind = Literal["filter", "scorer", "picker"]


@dataclass(frozen=True)
class PluginType:
    name: str
    kind: Kind
    params: type[PluginParams]
    factory: Callable[[Any, Context], object]


def _entry(module: Any) -> PluginType:
    return PluginType(module.TYPE, module.KIND, module.Params, module.create)


PLUGINS: tuple[PluginType, ...] = tuple(_entry(m) for m in (
    ready, saturation_filter,
    least_inflight, load, prefix_affinity, precise_prefix, session_affinity,
    max_score, power_of_two, round_robin, random_pick,
))
PLUGIN_TYPES: Mapping[str, PluginType] = MappingProxyType({p.name: p for p in PLUGINS})

READY = ready.TYPE

BUILTIN_PROFILES: tuple[ProfileSpec, ...] = (
    ProfileSpec(name="default", filters=(READY, saturation_filter.TYPE),
                scorers=(ScorerRef(plugin=prefix_affinity.TYPE, weight=3), ScorerRef(plugin=load.TYPE, weight=1)),
                picker=max_score.TYPE),
    # the default of a model whose engine publishes KV events (profile_name)
    ProfileSpec(name="precise", filters=(READY, saturation_filter.TYPE),
                scorers=(ScorerRef(plugin=precise_prefix.TYPE, weight=3), ScorerRef(plugin=load.TYPE, weight=1)),
                picker=max_score.TYPE),
    ProfileSpec(name="round-robin", filters=(READY,), picker=round_robin.TYPE),
    ProfileSpec(name="least-load", filters=(READY,),
                scorers=(ScorerRef(plugin=least_inflight.TYPE, weight=1), ScorerRef(plugin=load.TYPE, weight=1)),
                picker=max_score.TYPE),
    ProfileSpec(name="random", filters=(READY,), picker=random_pick.TYPE),
    ProfileSpec(name="session", filters=(READY, saturation_filter.TYPE),
                scorers=(ScorerRef(plugin=session_affinity.TYPE, weight=2), ScorerRef(plugin=load.TYPE, weight=1)),
                picker=max_score.TYPE),
)
DEFAULT_PROFILE = "default"
PRECISE_PROFILE = "precise"


def profile_name(model: BaseModelSpec, routing: RoutingSpec) -> str:
    """The profile a model routes with: its own; for `default` (unless the spec redefines it), `precise` when its
    engine says the model publishes KV events."""
    if model.routing != DEFAULT_PROFILE or any(p.name == DEFAULT_PROFILE for p in routing.profiles):
        return model.routing
    from modelyard.engines import get_engine

    engine = getattr(model, "engine", None)
    publishes = isinstance(engine, str) and get_engine(engine).publishes_kv_events(model)
    return PRECISE_PROFILE if publishes else DEFAULT_PROFILE


def plugin_type(name: str) -> PluginType | None:
    found = PLUGIN_TYPES.get(name)
    if found is None:
        stem, _, suffix = name.rpartition("-")
        found = PLUGIN_TYPES.get(stem)
        if found is not None and found.kind != suffix:
            found = None
    return found


@dataclass(frozen=True)
class Instance:
    name: str
    type: PluginType
    params: Mapping[str, Any]


def instances(routing: RoutingSpec) -> dict[str, Instance]:
    """Plugin instances by name: the built-in ones (default params), replaced or joined by the declared ones.
    A declared instance of an unknown type, or of another kind than the built-in it would replace, is left out
    (the spec loader reports it)."""
    out = {p.name: Instance(p.name, p, MappingProxyType({})) for p in PLUGINS}
    for declared in routing.plugins:
        kind = plugin_type(declared.type)
        builtin = PLUGIN_TYPES.get(declared.name)
        if kind is not None and (builtin is None or builtin.kind == kind.kind):
            out[declared.name] = Instance(declared.name, kind, MappingProxyType(dict(declared.params)))
    return out


def profiles(routing: RoutingSpec) -> dict[str, ProfileSpec]:
    """Profiles by name: the built-in ones, replaced or joined by the declared ones."""
    out = {p.name: p for p in BUILTIN_PROFILES}
    out.update({p.name: p for p in routing.profiles})
    return out
