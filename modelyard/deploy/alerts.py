"""The Prometheus alert rules of a yard.yaml, from the gateway's own metrics (observability/metrics.py): a pure
function from the spec to a rules document (`groups:`), which `modelyard render alerts` writes as it is and
`modelyard render kubernetes` wraps in a PrometheusRule.

The TTFT objective is a p90 (`slo.ttft_p90_s`): 10% of requests may be slower, so the error budget is 0.10 and a
burn rate of 1 spends it exactly. Alerting follows the multi-window rule (a long window so that it matters, a short
one so that it stops soon after the cause does): critical at 4x over 1 h and 5 m (40% of requests slow), warning at
2x over 6 h and 30 m. "Slow" is over the smallest histogram bucket at or above the objective (the annotation says
which)."""

from __future__ import annotations

from typing import Any

from prometheus_client.utils import floatToGoString

from modelyard.observability.metrics import (
    LATENCY_BUCKETS,
    QUEUE_DEPTH,
    REJECTIONS_TOTAL,
    REPLICAS,
    REPLICAS_DESIRED,
    REQUESTS_TOTAL,
    TTFT_SECONDS,
    USAGE_BUFFERED,
)
from modelyard.routing.endpoints import ReplicaState
from modelyard.spec.schema import AnyModel, YardSpec

Rule = dict[str, Any]
LIMITER_UNAVAILABLE = "limiter_unavailable"  # the rejection reason the gateway counts when Redis is down (tenancy.py)
DOWN_STATES = (ReplicaState.UNHEALTHY, ReplicaState.FAILED, ReplicaState.RESTARTING)
TTFT_BUDGET = 0.10  # a p90 objective
BURN_WINDOWS = (("critical", 4.0, "1h", "5m", "2m"), ("warning", 2.0, "6h", "30m", "15m"))
ERROR_RATIO = 0.05
USAGE_BEHIND_BATCHES = 4  # records waiting for the store, in batches of store.usage_batch_size
MODEL = "{{ $labels.model }}"


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str,
           extra: dict[str, str] | None = None) -> Rule:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity, **(extra or {})},
            "annotations": {"summary": summary, "description": description}}


def replica_rules() -> list[Rule]:
    down = "|".join(s.value for s in DOWN_STATES)
    ready = ReplicaState.READY.value
    return [
        _alert("ModelyardReplicaDown", f'max by (model, state) ({REPLICAS}{{state=~"{down}"}}) > 0', "5m", "warning",
               f"{MODEL}: a replica is {{{{ $labels.state }}}}",
               "A replica of the model failed its probe or keeps restarting; the gateway routes around it."),
        _alert("ModelyardNoReadyReplica",
               f'max by (model) ({REPLICAS_DESIRED}) > 0 and max by (model) ({REPLICAS}{{state="{ready}"}}) == 0',
               "10m", "critical", f"{MODEL}: no ready replica",
               "Replicas are wanted but none is ready: the model's requests wait, then fail with 503."),
    ]


def _le(threshold: float) -> str | None:
    bound = next((b for b in LATENCY_BUCKETS if b >= threshold), None)
    return None if bound is None else str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _slow_ratio(model: str, le: str, window: str) -> str:
    match = f'model="{model}"'
    good = f'sum by (model) (rate({TTFT_SECONDS}_bucket{{{match},le="{le}"}}[{window}]))'
    total = f"sum by (model) (rate({TTFT_SECONDS}_count{{{match}}}[{window}]))"
    return f"(1 - {good} / {total})"


def ttft_rules(model: AnyModel) -> list[Rule]:
    if model.slo is None or model.slo.ttft_p90_s is None:
        return []
    le = _le(model.slo.ttft_p90_s)
    if le is None:
        return []
    rules = []
    for severity, burn, long, short, for_ in BURN_WINDOWS:
        limit = f"{burn * TTFT_BUDGET:g}"
        expr = (f"{_slow_ratio(model.name, le, long)} > {limit}\nand\n"
                f"{_slow_ratio(model.name, le, short)} > {limit}")
        rules.append(_alert("ModelyardTTFTBudgetBurn", expr, for_, severity,
                            f"{MODEL}: TTFT p90 objective burning {burn:g}x",
                            f"Over {long} and {short}, more than {burn * TTFT_BUDGET:.0%} of requests waited more "
                            f"than {le} s for their first token (objective: p90 <= {model.slo.ttft_p90_s:g} s).",
                            {"window": long}))
    return rules


def gateway_rules(spec: YardSpec) -> list[Rule]:
    requests = f"{REQUESTS_TOTAL}_total"
    behind = spec.store.usage_batch_size * USAGE_BEHIND_BATCHES
    return [
        _alert("ModelyardQueueGrowing",
               f"sum by (model) ({QUEUE_DEPTH}) > 0 and sum by (model) (deriv({QUEUE_DEPTH}[10m])) > 0", "10m",
               "warning", f"{MODEL}: the admission queue keeps growing",
               "Requests arrive faster than the replicas serve them: add replicas or raise the autoscaler's max."),
        _alert("ModelyardErrorRate",
               f'sum by (model) (rate({requests}{{status=~"5..|error"}}[5m])) / sum by (model) (rate({requests}[5m])) '
               f"> {ERROR_RATIO:g}", "10m", "warning", f"{MODEL}: more than {ERROR_RATIO:.0%} of requests fail",
               "The gateway answers 5xx (engine failures, timeouts, no capacity) for the model."),
        _alert("ModelyardLimiterUnavailable",
               f'sum (rate({REJECTIONS_TOTAL}_total{{reason="{LIMITER_UNAVAILABLE}"}}[5m])) > 0', "2m", "critical",
               "Rate limiting is unavailable", "The shared limiter (store.redis) does not answer: the gateway "
               "fails closed and turns requests away with 503."),
        _alert("ModelyardUsageWriterBehind", f"max by (pod) ({USAGE_BUFFERED}) > {behind}", "5m", "warning",
               "Usage records are not reaching the store",
               f"More than {behind} usage records wait in a gateway's buffer: the store is slow or down."),
    ]


def alert_rules(spec: YardSpec) -> dict[str, Any]:
    slo = [rule for model in spec.models for rule in ttft_rules(model)]
    groups: list[dict[str, Any]] = [{"name": "modelyard", "rules": [*replica_rules(), *gateway_rules(spec)]}]
    if slo:
        groups.append({"name": "modelyard-slo", "rules": slo})
    return {"groups": groups}
