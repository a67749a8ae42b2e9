"""What changes between two revisions of a yard.yaml, and how each change is applied to a running cluster: in place
(keys, limits, routing, admission, timeouts, scaling, pools: nothing restarts, no request is dropped), by a rolling
replacement of a model's replicas (its engine, weights or engine arguments: new replicas pass the gate, then take
traffic while the old ones drain), or not at all without restarting `up` (the gateway's address, the store)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from modelyard.spec.schema import AnyModel, YardSpec

# a model's fields whose change needs no new replica (the gateway and the reconcile loop take them as they are)
IN_PLACE_FIELDS = frozenset({"routing", "admission", "timeouts", "store_text", "slo", "validation", "replicas",
                             "memory_gib"})
# top-level fields applied in place, and those that only a restart of `up` can change
IN_PLACE_SECTIONS = frozenset({"routing", "pools", "resources", "store.record_usage", "store.usage_retention_days",
                               "store.usage_flush_interval_s", "store.usage_batch_size", "gateway.keys",
                               "gateway.admin_key_env"})
Action = Literal["add", "remove", "replace", "in_place"]


@dataclass(frozen=True)
class Change:
    path: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.path}: {_short(self.before)} -> {_short(self.after)}"


@dataclass(frozen=True)
class ModelPlan:
    name: str
    action: Action
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelPlan, ...]
    in_place: tuple[Change, ...]  # outside the models
    needs_restart: tuple[Change, ...]  # what `apply` cannot do: `up` must be restarted

    @property
    def empty(self) -> bool:
        return not (self.models or self.in_place or self.needs_restart)

    def replaced(self) -> list[str]:
        return [m.name for m in self.models if m.action == "replace"]


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk(before: Any, after: Any, path: str) -> Iterator[Change]:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            yield from _walk(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
    elif before != after:
        yield Change(path, before, after)


def _model_plan(before: AnyModel, after: AnyModel) -> ModelPlan | None:
    changes = tuple(_walk(before.model_dump(mode="json"), after.model_dump(mode="json"), f"models[{after.name}]"))
    if not changes:
        return None
    fields = {c.path.split(".", 2)[1] for c in changes}
    return ModelPlan(after.name, "in_place" if fields <= IN_PLACE_FIELDS else "replace", changes)


def plan(serving: YardSpec, new: YardSpec) -> Plan:
    old_models = {m.name: m for m in serving.models}
    new_models = {m.name: m for m in new.models}
    models: list[ModelPlan] = []
    restart: list[Change] = []
    for name, model in new_models.items():
        if name not in old_models:
            models.append(ModelPlan(name, "add"))
        elif (changed := _model_plan(old_models[name], model)) is not None:
            if changed.action == "replace" and (model.roles is not None or old_models[name].roles is not None):
                restart += changed.changes  # a rolling replace's new replicas would be numbered past the roles
            else:
                models.append(changed)
    models += [ModelPlan(name, "remove") for name in old_models if name not in new_models]
    top_before = serving.model_dump(mode="json", exclude={"models"})
    top_after = new.model_dump(mode="json", exclude={"models"})
    in_place: list[Change] = []
    for change in _walk(top_before, top_after, ""):
        section = change.path.split(".")
        keyed = ".".join(section[:2])
        (in_place if section[0] in IN_PLACE_SECTIONS or keyed in IN_PLACE_SECTIONS else restart).append(change)
    return Plan(tuple(models), tuple(in_place), tuple(restart))


def describe(result: Plan, new: YardSpec) -> list[str]:
    """The plan as lines for a terminal: what restarts, what changes in place, what the gate checks."""
    if result.empty:
        return ["no changes"]
    lines: list[str] = []
    verbs = {"add": "+ add", "remove": "- remove (drained)", "replace": "~ replace (rolling, gated)",
             "in_place": "~ change in place"}
    for item in result.models:
        lines.append(f"{verbs[item.action]} model {item.name}")
        lines += [f"    {change}" for change in item.changes]
        model = new.model(item.name)
        if item.action in ("add", "replace") and model is not None:
            gate = getattr(model, "validation", None)
            checks = [name for name in ("quality", "determinism", "speed") if gate and getattr(gate, name)]
            lines.append(f"    gate: {', '.join(checks) if checks else 'the readiness probe only (no validation:)'}")
    if result.in_place:
        lines.append("~ change in place")
        lines += [f"    {change}" for change in result.in_place]
    if result.needs_restart:
        lines.append("! cannot be applied to a running cluster (restart `modelyard up`)")
        lines += [f"    {change}" for change in result.needs_restart]
    return lines
