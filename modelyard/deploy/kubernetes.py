"""`modelyard render kubernetes`: a yard.yaml in, Kubernetes manifests out (pure: nothing is read from the cluster
or written here; modelyard/deploy/cli.py writes the files).

One file per model (its Deployment, headless Service, PDB, NetworkPolicy, and its ScaledObject or HPA), and shared
files: the namespace, the weights volume, the gateway (with its ConfigMap, RBAC, HPA, PDB, NetworkPolicy), Redis,
monitoring (ServiceMonitor, PodMonitor, PrometheusRule, and the Grafana dashboards as ConfigMaps that Grafana's
dashboard sidecar loads), and a kustomization.yaml listing them.

Models: fixed (`replicas: N`) get N replicas; autoscaled ones a KEDA ScaledObject or an HPA; a pool member is its
own Deployment, pinned members at 1 replica, the others scaled between 0 and 1 by KEDA on requests waiting for them
(Kubernetes has no "N of these awake" object: the GPUs of the pool's nodes bound it; with `--autoscaler hpa`, which
cannot reach 0, every member stays at 1). An `openai` model runs elsewhere: nothing is rendered for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelyard.deploy.alerts import alert_rules
from modelyard.deploy.grafana import dashboard_text, dashboards
from modelyard.deploy.kube_common import (
    ENGINE_PORT_NAME,
    GATEWAY_NAME,
    Manifest,
    RenderOptions,
    file_stem,
    labels,
    meta,
    obj,
)
from modelyard.deploy.kube_engines import RenderError, engine_objects, engine_pod
from modelyard.deploy.kube_gateway import METRICS_KEY_ENV, SECRET_NAME, gateway_objects, redis_objects, tokenizer_paths
from modelyard.deploy.kube_scaling import adapter_rules, hpa, pool_member_scaling, scaled_object
from modelyard.engines import EngineAdapter, get_engine
from modelyard.spec.schema import AnyModel, YardSpec

__all__ = ["RenderError", "RenderOptions", "Rendered", "render", "engine_image"]

KUSTOMIZATION = "kustomization.yaml"
DASHBOARD_LABEL = "grafana_dashboard"  # the label Grafana's dashboard sidecar watches for (its default)
DASHBOARD_FOLDER = "grafana_folder"  # the folder, where the sidecar's `folderAnnotation` names this annotation
ADAPTER_RULES = "prometheus-adapter-rules.yaml"  # a values fragment for prometheus-adapter's chart, not applied


@dataclass
class Rendered:
    files: dict[str, list[Manifest]] = field(default_factory=dict)  # file name -> objects, in apply order
    extras: dict[str, Any] = field(default_factory=dict)  # file name -> one document, not Kubernetes objects
    notes: list[str] = field(default_factory=list)  # what was not rendered, and why

    def objects(self) -> list[Manifest]:
        return [o for objects in self.files.values() for o in objects]


def engine_image(adapter: EngineAdapter, options: RenderOptions) -> str | None:
    """The container image that runs this engine; None: none is known (the model is not rendered)."""
    if adapter.image is None:
        return options.images.modelyard  # an engine modelyard's own image runs (the simulator)
    image: str | None = getattr(options.images, adapter.name, None)  # the operator's choice, else the adapter's
    return image or adapter.image


def _replicas_and_scaler(spec: YardSpec, adapter: EngineAdapter, model: AnyModel,
                         options: RenderOptions) -> tuple[int | None, list[Manifest], str | None]:
    pool = spec.pool_of(model.name)
    if pool is not None:
        if model.name in pool.pinned or options.autoscaler == "hpa":
            note = None if model.name in pool.pinned else (
                f"{model.name}: pool {pool.name} member kept at 1 replica (an HPA cannot scale to 0; use --autoscaler "
                "keda to wake members on demand)")
            return 1, [], note
        return None, [pool_member_scaling(adapter, model, options)], None
    scaling = model.scaling
    if scaling is None:
        return model.min_replicas, [], None
    if options.autoscaler == "keda":
        return None, [scaled_object(adapter, model, scaling, options)], None
    note = (f"{model.name}: min 0 needs KEDA; the HPA keeps at least 1 replica" if scaling.min == 0 else None)
    return None, [hpa(adapter, model, scaling, options)], note


def model_objects(spec: YardSpec, model: AnyModel, options: RenderOptions, out: Rendered) -> None:
    adapter = get_engine(model.engine)
    if not adapter.runs_here:
        out.notes.append(f"{model.name}: engine {adapter.name} runs elsewhere; the gateway reaches it at its urls")
        return
    image = engine_image(adapter, options)
    if image is None:
        out.notes.append(f"{model.name}: engine {adapter.name} has no container image for Kubernetes (rendered: "
                         "vllm, sglang, llamacpp, simulator); not rendered, see docs/kubernetes.md")
        return
    replicas, scaler, note = _replicas_and_scaler(spec, adapter, model, options)
    if note:
        out.notes.append(note)
    share = adapter.resources(model)
    if share.gpus > 8:
        out.notes.append(f"{model.name}: {share.gpus} GPUs per replica is more than one node has: it needs a "
                         "multi-node group (LeaderWorkerSet), which is not rendered")
    out.files[f"{file_stem(model.name)}.yaml"] = [*engine_objects(adapter, model, image, replicas, options), *scaler]


def monitoring_objects(spec: YardSpec, options: RenderOptions) -> list[Manifest]:
    part_of = {"app.kubernetes.io/part-of": "modelyard"}
    return [
        obj("monitoring.coreos.com/v1", "ServiceMonitor", meta(GATEWAY_NAME, "gateway", options), spec={
            "selector": {"matchLabels": {**part_of, "app.kubernetes.io/name": GATEWAY_NAME}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s",  # /metrics wants its key
                           "authorization": {"type": "Bearer", "credentials": {
                               "name": SECRET_NAME, "key": spec.gateway.metrics_key_env or METRICS_KEY_ENV}}}]}),
        obj("monitoring.coreos.com/v1", "PodMonitor", meta("modelyard-engines", "engine", options), spec={
            "selector": {"matchLabels": {**part_of, "app.kubernetes.io/component": "engine"}},
            "podMetricsEndpoints": [{"port": ENGINE_PORT_NAME, "path": "/metrics", "interval": "15s"}]}),
        obj("monitoring.coreos.com/v1", "PrometheusRule", meta("modelyard", "monitoring", options),
            spec=alert_rules(spec)),
        *dashboard_objects(spec, options),
    ]


def dashboard_objects(spec: YardSpec, options: RenderOptions) -> list[Manifest]:
    """One ConfigMap per dashboard (a ConfigMap holds at most 1 MiB; a dashboard is tens of kB)."""
    out = []
    for uid, dashboard in dashboards(spec).items():
        metadata = meta(uid.replace("modelyard-", "modelyard-dashboard-", 1), "dashboard", options,
                        annotations={DASHBOARD_FOLDER: "modelyard"})
        metadata["labels"][DASHBOARD_LABEL] = "1"
        out.append(obj("v1", "ConfigMap", metadata, data={f"{uid}.json": dashboard_text(dashboard)}))
    return out


def shared_objects(spec: YardSpec, options: RenderOptions) -> dict[str, list[Manifest]]:
    files: dict[str, list[Manifest]] = {
        "namespace.yaml": [obj("v1", "Namespace", {"name": options.namespace,
                                                   "labels": labels(options.namespace, "namespace")})]}
    weights = options.weights
    mounts = any(engine_image(get_engine(m.engine), options) and engine_pod(get_engine(m.engine), m).mounts
                 for m in spec.models) or bool(tokenizer_paths(spec, options))
    if mounts and weights.host_path is None:
        claim: Manifest = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": weights.size}}}
        if weights.storage_class:
            claim["storageClassName"] = weights.storage_class
        files["weights.yaml"] = [obj("v1", "PersistentVolumeClaim", meta(weights.claim, "weights", options),
                                     spec=claim)]
    files["gateway.yaml"] = gateway_objects(spec, options)
    if spec.store.redis is None:
        files["redis.yaml"] = redis_objects(options)
    files["monitoring.yaml"] = monitoring_objects(spec, options)
    return files


def render(spec: YardSpec, options: RenderOptions | None = None) -> Rendered:
    options = options or RenderOptions()
    for index, model in enumerate(spec.models):
        if model.roles is not None:  # one Deployment per role, and the roles in discovery: not yet
            raise RenderError(f"models[{index}].roles: not rendered for Kubernetes yet (model {model.name!r})")
    out = Rendered(files=shared_objects(spec, options))
    for model in spec.models:
        model_objects(spec, model, options, out)
    if spec.store.url is None:
        out.notes.append("store: SQLite in each gateway pod's emptyDir (keys and usage are per pod and lost on "
                         "restart): set store.url to a postgresql:// URL for a shared store")
    if options.autoscaler == "hpa":
        rendered = {m.engine for m in spec.models if file_stem(m.name) + ".yaml" in out.files}
        out.extras[ADAPTER_RULES] = adapter_rules([get_engine(e) for e in sorted(rendered)])
    out.extras[KUSTOMIZATION] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                 "namespace": options.namespace, "resources": list(out.files)}
    return out
