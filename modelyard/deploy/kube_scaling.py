"""How an autoscaled model (and a pool member) scales in Kubernetes: a KEDA ScaledObject on the gateway's load per
replica (requests in flight at the model's replicas plus those queued in front of them: the same load `up`'s
autoscaler reads), min 0 allowed; or an HPA on the engine's own running + waiting requests per pod, through
prometheus-adapter (min at least 1). The behaviour (windows, rates) comes from the spec's scaling fields."""

from __future__ import annotations

import math

from modelyard.deploy.kube_common import Manifest, RenderOptions, meta, obj, object_name, seconds
from modelyard.engines import EngineAdapter
from modelyard.observability.metrics import IN_FLIGHT, QUEUE_DEPTH
from modelyard.spec.scaling import ScalingSpec
from modelyard.spec.schema import AnyModel

COMPONENT = "engine"
POOL_IDLE_S = 300.0  # a pool member idle this long goes to zero (KEDA's cooldown): its GPUs go back to the pool
HPA_METRIC_PREFIX = "modelyard_engine_load_"  # + the engine's name: what prometheus-adapter serves per pod


def _period(value: float) -> int:
    return min(1800, seconds(value))


def behavior(scaling: ScalingSpec) -> Manifest:
    """Up: at once, at most x scale_up_rate (at least +1) per panic window. Down: only after scale_down_delay_s of
    wanting fewer, on the recommendation of a whole stable window, at most / scale_down_rate per window."""
    up_period = _period(scaling.panic_window_s)
    down_period = _period(scaling.stable_window_s)
    down_percent = max(1, math.floor((1 - 1 / scaling.scale_down_rate) * 100))
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Percent", "value": max(1, round((scaling.scale_up_rate - 1) * 100)), "periodSeconds": up_period},
            {"type": "Pods", "value": 1, "periodSeconds": up_period}]},
        "scaleDown": {"stabilizationWindowSeconds": min(3600, seconds(scaling.stable_window_s
                                                                      + scaling.scale_down_delay_s)),
                      "selectPolicy": "Max", "policies": [
                          {"type": "Percent", "value": down_percent, "periodSeconds": down_period},
                          {"type": "Pods", "value": 1, "periodSeconds": down_period}]},
    }


def load_query(model: AnyModel, options: RenderOptions) -> str:
    """The model's load as the gateways see it, summed over every gateway pod."""
    match = f'{{namespace="{options.namespace}",model="{model.name}"}}'
    return f"(sum({IN_FLIGHT}{match}) or vector(0)) + (sum({QUEUE_DEPTH}{match}) or vector(0))"


def _target(adapter: EngineAdapter, model: AnyModel, scaling: ScalingSpec) -> str:
    value = scaling.target_in_flight or float(adapter.slots(model))
    return f"{value:g}"


def scaled_object(adapter: EngineAdapter, model: AnyModel, scaling: ScalingSpec, options: RenderOptions,
                  idle_s: float | None = None) -> Manifest:
    name = object_name(model.name)
    return obj("keda.sh/v1alpha1", "ScaledObject", meta(name, COMPONENT, options), spec={
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": scaling.min, "maxReplicaCount": scaling.max,
        "pollingInterval": max(1, min(30, seconds(scaling.panic_window_s))),
        "cooldownPeriod": seconds(idle_s if idle_s is not None else scaling.scale_to_zero_after_s),
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(scaling)}},
        "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
            "serverAddress": options.prometheus_url, "query": load_query(model, options),
            "threshold": _target(adapter, model, scaling), "activationThreshold": "0"}}],
    })


def hpa(adapter: EngineAdapter, model: AnyModel, scaling: ScalingSpec, options: RenderOptions) -> Manifest:
    name = object_name(model.name)
    return obj("autoscaling/v2", "HorizontalPodAutoscaler", meta(name, COMPONENT, options), spec={
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": max(1, scaling.min), "maxReplicas": scaling.max,
        "behavior": behavior(scaling),
        "metrics": [{"type": "Pods", "pods": {
            "metric": {"name": HPA_METRIC_PREFIX + adapter.name},
            "target": {"type": "AverageValue", "averageValue": _target(adapter, model, scaling)}}}],
    })


def pool_member_scaling(adapter: EngineAdapter, model: AnyModel, options: RenderOptions) -> Manifest:
    """A pool member that is not pinned: 0 or 1 replica, woken by a request waiting for it, back to 0 once idle."""
    return scaled_object(adapter, model, ScalingSpec(min=0, max=1), options, idle_s=POOL_IDLE_S)


def adapter_rules(adapters: list[EngineAdapter]) -> Manifest:
    """prometheus-adapter's `rules.custom` (a values fragment for its chart): per engine, running + waiting requests
    per pod, as the metric the HPAs ask for."""
    rules = []
    for adapter in adapters:
        running, waiting = adapter.metrics.running, adapter.metrics.waiting
        if not running or not waiting:
            continue
        run, wait = running[0].decode(), waiting[0].decode()
        rules.append({
            "seriesQuery": f'{{__name__="{run}",namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": ".*", "as": HPA_METRIC_PREFIX + adapter.name},
            "metricsQuery": (f"sum by (<<.GroupBy>>) ({{__name__=\"{run}\",<<.LabelMatchers>>}}) + "
                             f"sum by (<<.GroupBy>>) ({{__name__=\"{wait}\",<<.LabelMatchers>>}})"),
        })
    return {"rules": {"custom": rules}}
