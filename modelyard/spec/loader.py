from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelyard.spec import common, scaling, schema, validation
from modelyard.spec.schema import ENGINE_NAMES, REPLICAS_FORMS, YardSpec

Loc = tuple[str | int, ...]
PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")


class SpecError(Exception):
    """A yard.yaml problem; each line names the path and, where known, the file and line."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def format_path(loc: Iterable[str | int]) -> str:
    """`models[2].replicas.max`; a key that is not a plain name is quoted (`params['a b']`), so that a path made of
    blanks or control characters still reads as one."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not PLAIN_KEY.match(str(part)):
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _line_map(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, loc + (key,), lines)
            lines[loc + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, loc + (index,), lines)


def _strip_tags(loc: Loc) -> Loc:
    # pydantic puts the discriminator's value into the location of a tagged union member: drop it
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in ENGINE_NAMES and i >= 2 and loc[i - 2] == "models" and isinstance(loc[i - 1], int):
            continue
        if part in REPLICAS_FORMS and i >= 1 and loc[i - 1] == "replicas":
            continue
        out.append(part)
    return tuple(out)


def _message(error: Any, loc: Loc) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field" + _suggest(loc)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}"
    if kind == "union_tag_invalid":
        return f"must be one of {', '.join(ENGINE_NAMES)}"
    if kind == "union_tag_not_found":
        return f"is required (one of {', '.join(ENGINE_NAMES)})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == common.NAME_PATTERN:
            return "must be 1-128 letters, digits or ._:/- (starting with a letter or digit)"
        if ctx.get("pattern") == common.SHA256_PATTERN:
            return "must be a sha256: 64 lowercase hex digits"
        return f"must match {ctx.get('pattern')}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping"
    if kind in ("tuple_type", "list_type"):
        return "must be a list"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _suggest(loc: Loc) -> str:
    name = str(loc[-1])
    fields: set[str] = set()
    for cls in (schema.YardSpec, schema.GatewaySpec, schema.KeySpec, schema.LlamaCppModel, schema.SimulatorModel,
                schema.OpenAIModel, schema.VLLMModel, schema.ModelSource, schema.WeightsSource, schema.RopeScaling,
                schema.LoraAdapter, schema.Timeouts, schema.StoreSpec, schema.AdmissionSpec, scaling.ScalingSpec,
                scaling.SLOSpec, scaling.PoolSpec, scaling.ResourcesSpec,
                validation.ValidationSpec, validation.QualitySpec, validation.DeterminismSpec, validation.SpeedSpec):
        fields.update(cls.model_fields)
    close = _closest(name, sorted(fields))
    return f" (did you mean {close!r}?)" if close else ""


def _closest(name: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def _names_hint(name: str, known: list[str]) -> str:
    """For a name that must be one of `known`: the closest, else one that starts with it or that it starts with,
    else the whole list."""
    close = _closest(name, known) or next((k for k in known if k.startswith(name) or name.startswith(k)), None)
    return f" (did you mean {close!r}?)" if close else f" (known: {', '.join(known)})"


def _where(loc: Loc, lines: dict[Loc, int], source: str) -> str:
    probe = loc
    while probe not in lines and probe:
        probe = probe[:-1]
    line = lines.get(probe)
    return f" ({source}:{line})" if line else f" ({source})"


def parse_spec(text: str, source: str = "yard.yaml") -> YardSpec:
    try:
        return _parse(text, source)
    except RecursionError:  # PyYAML and pydantic recurse per level: a document nested thousands deep
        raise SpecError([f"not valid YAML: nested too deeply ({source})"]) from None


def _parse(text: str, source: str) -> YardSpec:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"not valid YAML: {problem} ({where})"]) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _line_map(node, (), lines)
    if not isinstance(data, dict):
        raise SpecError([f"(top level): must be a mapping with a 'models' list ({source})"])
    try:
        spec = YardSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = _strip_tags(tuple(error["loc"]))
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = loc + ("engine",)
            problems.append(f"{format_path(loc)}: {_message(error, loc)}{_where(loc, lines, source)}")
        raise SpecError(problems) from None
    _check_semantics(spec, lines, source)
    return spec


def _check_semantics(spec: YardSpec, lines: dict[Loc, int], source: str) -> None:
    problems = []
    if not spec.models:
        problems.append(f"models: must not be empty{_where(('models',), lines, source)}")
    seen: dict[str, int] = {}
    for index, model in enumerate(spec.models):
        if model.name in seen:
            loc: Loc = ("models", index, "name")
            problems.append(f"{format_path(loc)}: {model.name!r} is already used by "
                            f"models[{seen[model.name]}]{_where(loc, lines, source)}")
        seen.setdefault(model.name, index)
    problems += _check_routing(spec, lines, source)
    problems += _check_pools(spec, lines, source)
    problems += _check_roles(spec, lines, source)
    key_names: set[str] = set()
    for index, key in enumerate(spec.gateway.keys):
        if key.name in key_names:
            loc = ("gateway", "keys", index, "name")
            problems.append(f"{format_path(loc)}: {key.name!r} is used twice{_where(loc, lines, source)}")
        key_names.add(key.name)
    if problems:
        raise SpecError(problems)


def _check_routing(spec: YardSpec, lines: dict[Loc, int], source: str) -> list[str]:
    from modelyard.routing import registry  # the plugin types; routing imports nothing from the loader

    problems: list[str] = []

    def problem(loc: Loc, message: str) -> None:
        problems.append(f"{format_path(loc)}: {message}{_where(loc, lines, source)}")

    declared_names = _first_uses([p.name for p in spec.routing.plugins], ("routing", "plugins"), problem)
    for index, declared in enumerate(spec.routing.plugins):
        _check_plugin(index, declared.name, declared.type, declared.params, problem)
    plugins = registry.instances(spec.routing)
    names = sorted(plugins)
    for index, profile in enumerate(spec.routing.profiles):
        base: Loc = ("routing", "profiles", index)
        refs: list[tuple[Loc, str, str]] = [(base + ("filters", i), name, "filter")
                                            for i, name in enumerate(profile.filters)]
        refs += [(base + ("scorers", i, "plugin"), ref.plugin, "scorer") for i, ref in enumerate(profile.scorers)]
        refs.append((base + ("picker",), profile.picker, "picker"))
        for loc, name, wanted in refs:
            instance = plugins.get(name)
            if instance is None and name in declared_names:
                continue  # declared with a bad type: reported above
            if instance is None:
                problem(loc, f"unknown plugin {name!r}{_names_hint(name, names)}")
            elif instance.type.kind != wanted:
                problem(loc, f"{name!r} is a {instance.type.kind}, not a {wanted}")
    _first_uses([p.name for p in spec.routing.profiles], ("routing", "profiles"), problem)
    profile_names = sorted(registry.profiles(spec.routing))
    for index, model in enumerate(spec.models):
        if model.routing not in profile_names:
            problem(("models", index, "routing"),
                    f"unknown profile {model.routing!r}{_names_hint(model.routing, profile_names)}")
    return problems


def _check_pools(spec: YardSpec, lines: dict[Loc, int], source: str) -> list[str]:
    """Pool members are models of this file, in one pool each, with one replica of an engine modelyard runs; the
    pinned ones fit."""
    from modelyard.engines import get_engine  # what an engine can do is its adapter's to say

    problems: list[str] = []

    def problem(loc: Loc, message: str) -> None:
        problems.append(f"{format_path(loc)}: {message}{_where(loc, lines, source)}")

    _first_uses([p.name for p in spec.pools], ("pools",), problem)
    owner: dict[str, str] = {}
    for index, pool in enumerate(spec.pools):
        for position, name in enumerate(pool.members):
            loc: Loc = ("pools", index, "members", position)
            model = spec.model(name)
            if model is None:
                problem(loc, f"unknown model {name!r}{_names_hint(name, sorted(m.name for m in spec.models))}")
            elif name in owner:
                problem(loc, f"{name!r} is already a member of pool {owner[name]!r}")
            elif model.scaling is not None or model.max_replicas != 1:
                problem(loc, f"{name!r} must have `replicas: 1` (a pool member is one replica, woken or put to sleep)")
            elif not get_engine(model.engine).runs_here:
                problem(loc, f"{name!r} runs elsewhere (engine {model.engine}): modelyard cannot wake it or stop it")
            elif pool.memory_gib is not None and not (0 < (model.memory_gib or 0) <= pool.memory_gib):
                problem(loc, f"{name!r} needs memory_gib (at most the pool's {pool.memory_gib:g}) in a memory pool")
            owner.setdefault(name, pool.name)
        for position, name in enumerate(pool.pinned):
            if name not in pool.members:
                problem(("pools", index, "pinned", position), f"{name!r} is not a member of this pool")
        sizes = [1.0 if pool.slots is not None else (m.memory_gib or 0.0)
                 for m in spec.models if m.name in pool.pinned]
        room = float(pool.slots) if pool.slots is not None else (pool.memory_gib or 0.0)
        if sum(sizes) > room:
            problem(("pools", index, "pinned"), "the pinned members alone do not fit in the pool")
    return problems


def _check_roles(spec: YardSpec, lines: dict[Loc, int], source: str) -> list[str]:
    """A model with `roles:` is a chat model of an engine whose adapter can split prefill and decode, and its
    decode leg routes with a known profile."""
    from modelyard.engines import ENGINES, get_engine
    from modelyard.routing import registry

    problems: list[str] = []
    profile_names = sorted(registry.profiles(spec.routing))
    for index, model in enumerate(spec.models):
        if model.roles is None:
            continue
        loc: Loc = ("models", index, "roles")
        engine = get_engine(model.engine)
        if not engine.disaggregates(model):
            able = ", ".join(name for name in ENGINES if get_engine(name).can_disaggregate)
            problems.append(f"{format_path(loc)}: engine {model.engine} cannot split prefill and decode (engines "
                            f"that can: {able}){_where(loc, lines, source)}")
        elif engine.task(model).value != "chat":
            problems.append(f"{format_path(loc)}: roles are for chat models (task {engine.task(model).value} has no "
                            f"decode to split from its prefill){_where(loc, lines, source)}")
        name = model.roles.decode_routing
        if name not in profile_names:
            where = loc + ("decode_routing",)
            problems.append(f"{format_path(where)}: unknown profile {name!r}{_names_hint(name, profile_names)}"
                            f"{_where(where, lines, source)}")
    return problems


def _first_uses(names: list[str], section: Loc, problem: Callable[[Loc, str], None]) -> dict[str, int]:
    """Where each name is first used in a list of named entries; a later use of a name is a problem."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            problem((*section, index, "name"), f"{name!r} is already used by {format_path((*section, first[name]))}")
        first.setdefault(name, index)
    return first


def _check_plugin(index: int, name: str, type_name: str, params: Any, problem: Callable[[Loc, str], None]) -> None:
    """One routing.plugins entry: a known type, a name that is not a built-in of another kind, valid params."""
    from modelyard.routing import registry

    kind = registry.plugin_type(type_name)
    if kind is None:
        problem(("routing", "plugins", index, "type"),
                f"unknown plugin type {type_name!r}{_names_hint(type_name, sorted(registry.PLUGIN_TYPES))}")
        return
    builtin = registry.PLUGIN_TYPES.get(name)
    if builtin is not None and builtin.kind != kind.kind:
        problem(("routing", "plugins", index, "name"),
                f"{name!r} is the built-in {builtin.kind}; a {kind.kind} needs another name")
    try:
        kind.params.model_validate(params)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ("routing", "plugins", index, "params", *error["loc"])
            if error["type"] == "extra_forbidden":
                known = sorted(kind.params.model_fields)
                hint = _names_hint(str(loc[-1]), known) if known else " (it takes no params)"
                problem(loc, f"is not a parameter of {kind.name}{hint}")
            else:
                problem(loc, _message(error, loc))


def load_spec(path: str | Path) -> YardSpec:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{file}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{file}: cannot be read ({exc})"]) from None
    return parse_spec(text, source=file.name)
