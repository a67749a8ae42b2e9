"""The gateway in Kubernetes: the spec as a ConfigMap, its secrets by reference to a Secret the operator creates
(never rendered, never in the ConfigMap), a Deployment running `modelyard gateway`, its Service, HPA on CPU, PDB,
NetworkPolicy, the RBAC its discovery needs (EndpointSlices, watched), and Redis for limits shared by every
gateway pod (a StatefulSet, unless store.redis names one)."""

from __future__ import annotations

import hashlib
import math
from typing import Any
from urllib.parse import urlsplit

import yaml

from modelyard.deploy.kube_common import (
    CONFIG_NAME,
    CONFIG_PATH,
    GATEWAY_NAME,
    NON_ROOT_UID,
    REDIS_NAME,
    STATE_DIR,
    Manifest,
    RenderOptions,
    meta,
    obj,
    pdb,
    restricted_security,
    selector,
)
from modelyard.deploy.kube_engines import RenderError, tokenizer_mounts, weights_mounts, weights_volume
from modelyard.deploy.kube_probes import grace_seconds
from modelyard.engines import get_engine
from modelyard.engines.accelerator import CONTAINER_HUB_CACHE
from modelyard.spec.schema import YardSpec

COMPONENT = "gateway"
SECRET_NAME = "modelyard-secrets"  # created by the operator (docs/kubernetes.md), never rendered
API_KEY_ENV = "MODELYARD_API_KEY"
METRICS_KEY_ENV = "MODELYARD_METRICS_KEY"  # the Secret's key for /metrics, which Prometheus scrapes with
REDIS_PORT = 6379
GATEWAY_REPLICAS = (2, 10)  # HPA bounds: two for availability


def cluster_spec(spec: YardSpec) -> YardSpec:
    """The spec the gateway pods read: listening on every address, state in an emptyDir, one worker process a pod
    (the HPA adds pods), limits in the cluster's Redis."""
    workers = spec.gateway.workers if isinstance(spec.gateway.workers, int) else 1
    store = spec.store if spec.store.redis else spec.store.model_copy(
        update={"redis": f"redis://{REDIS_NAME}:{REDIS_PORT}/0"})
    return spec.model_copy(update={"state_dir": STATE_DIR, "store": store, "gateway": spec.gateway.model_copy(
        update={"host": "0.0.0.0", "workers": workers,
                "metrics_key_env": spec.gateway.metrics_key_env or METRICS_KEY_ENV})})


def spec_yaml(spec: YardSpec) -> str:
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["version"] = spec.version
    return yaml.safe_dump(data, sort_keys=False)


def check_no_secrets(spec: YardSpec) -> None:
    for field, url in (("store.url", spec.store.url), ("store.redis", spec.store.redis)):
        if url and urlsplit(url).password:
            hint = ("leave the password out of the URL and put PGPASSWORD in the Secret " + SECRET_NAME
                    if field == "store.url" else "use a Redis reachable without a password in the URL")
            raise RenderError(f"{field}: the URL holds a password, which would land in a ConfigMap: {hint}")


def secret_env(spec: YardSpec) -> list[Manifest]:
    """Every secret the gateway reads, as a reference into the Secret (required ones make a pod wait for it)."""
    required = [k.key_env for k in spec.gateway.keys if k.key_env]
    for model in spec.models:
        required += get_engine(model.engine).secret_env(model)
    optional = [API_KEY_ENV, spec.gateway.admin_key_env, spec.gateway.metrics_key_env or METRICS_KEY_ENV]
    if spec.store.url and spec.store.url.startswith(("postgresql://", "postgres://")):
        optional.append("PGPASSWORD")  # asyncpg reads it: the password stays out of store.url
    names = {**{n: True for n in optional}, **{n: False for n in required}}
    return [{"name": n, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": n, "optional": opt}}}
            for n, opt in sorted(names.items())]


def config_map(spec: YardSpec, options: RenderOptions) -> Manifest:
    return obj("v1", "ConfigMap", meta(CONFIG_NAME, COMPONENT, options), data={"yard.yaml": spec_yaml(spec)})


def tokenizer_paths(spec: YardSpec, options: RenderOptions) -> list[str]:
    """The weights volume's folders the gateway mounts: those of the models whose tokenizer it loads itself."""
    paths = list(dict.fromkeys(path for model in spec.models
                               for path in tokenizer_mounts(get_engine(model.engine), model)))
    if paths and options.weights.host_path:
        local = [m.name for m in spec.models if m.tokenizer == "local"]
        raise RenderError(f"tokenizer: local (model(s) {', '.join(map(repr, local))}) is read in the gateway's pod, "
                          "which runs on CPU nodes, and weights on a hostPath are on the GPU nodes only: use the "
                          "weights PersistentVolumeClaim (no --weights-host-path), or tokenizer: engine")
    return paths


def hub_cache_env(tokenizers: list[str]) -> list[Manifest]:
    """A hub model without cache_dir is read from the mounted hub cache, as in its engine's container."""
    if CONTAINER_HUB_CACHE in tokenizers:
        return [{"name": "HF_HUB_CACHE", "value": CONTAINER_HUB_CACHE}]
    return []


def _gateway_container(spec: YardSpec, options: RenderOptions, workers: int, tokenizers: list[str]) -> Manifest:
    port = spec.gateway.port
    # the port answering: /health is 503 while a model has no ready replica, /metrics needs its key
    check: Manifest = {"tcpSocket": {"port": "http"}, "timeoutSeconds": 5}
    return {
        "name": "gateway", "image": options.images.modelyard,
        "command": ["modelyard", "gateway", "-f", CONFIG_PATH],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *hub_cache_env(tokenizers), *secret_env(spec)],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": str(workers), "memory": f"{512 * workers}Mi"},
                      "limits": {"memory": f"{1024 * workers}Mi"}},
        "readinessProbe": {**check, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**check, "periodSeconds": 10, "failureThreshold": 6},
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},  # the Service stops sending before SIGTERM
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_PATH.rsplit("/", 1)[0], "readOnly": True},
                         {"name": "state", "mountPath": STATE_DIR}, {"name": "tmp", "mountPath": "/tmp"},
                         *weights_mounts(tokenizers)],
        "securityContext": {**restricted_security(), "runAsNonRoot": True},
    }


def deployment(spec: YardSpec, source: YardSpec, options: RenderOptions) -> Manifest:
    workers = spec.gateway.workers if isinstance(spec.gateway.workers, int) else 1
    grace = max((grace_seconds(m) for m in source.models), default=60)
    # the preStop sleep, the gateway's drain (gateway.http.drain_s), then the streams' ending and the usage flush
    grace = max(grace, 5 + math.ceil(spec.gateway.http.drain_s) + 15)
    tokenizers = tokenizer_paths(spec, options)
    pod: Manifest = {
        "serviceAccountName": GATEWAY_NAME, "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_gateway_container(spec, options, workers, tokenizers)],
        "volumes": [{"name": "config", "configMap": {"name": CONFIG_NAME}},
                    {"name": "state", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                    *([weights_volume(options)] if tokenizers else [])],
        "nodeSelector": dict(options.cpu_node_selector),
    }
    return obj("apps/v1", "Deployment", meta(GATEWAY_NAME, COMPONENT, options), spec={
        "selector": {"matchLabels": selector(GATEWAY_NAME)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": meta(GATEWAY_NAME, COMPONENT, options)["labels"],
                                  "annotations": {"modelyard.dev/config-sha256": _digest(spec_yaml(spec))}},
                     "spec": pod}})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()  # a changed spec rolls the gateway pods


def rbac(options: RenderOptions) -> list[Manifest]:
    """What discovery reads: each model's Service and its EndpointSlices (list and watch), in this namespace."""
    m = meta(GATEWAY_NAME, COMPONENT, options)
    ref: dict[str, Any] = {"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": options.namespace}
    return [
        obj("v1", "ServiceAccount", m, automountServiceAccountToken=True),
        obj("rbac.authorization.k8s.io/v1", "Role", m, rules=[
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}]),
        obj("rbac.authorization.k8s.io/v1", "RoleBinding", m, subjects=[ref], roleRef={
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY_NAME}),
    ]


def service_and_scaling(spec: YardSpec, options: RenderOptions) -> list[Manifest]:
    low, high = GATEWAY_REPLICAS
    return [
        obj("v1", "Service", meta(GATEWAY_NAME, COMPONENT, options), spec={
            "type": "ClusterIP", "selector": selector(GATEWAY_NAME),
            "ports": [{"name": "http", "port": spec.gateway.port, "targetPort": "http", "protocol": "TCP"}]}),
        obj("autoscaling/v2", "HorizontalPodAutoscaler", meta(GATEWAY_NAME, COMPONENT, options), spec={
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY_NAME},
            "minReplicas": low, "maxReplicas": high,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": 70}}}]}),
        {**pdb(GATEWAY_NAME, COMPONENT, options), "spec": {"minAvailable": 1,
                                                            "selector": {"matchLabels": selector(GATEWAY_NAME)}}},
        obj("networking.k8s.io/v1", "NetworkPolicy", meta(GATEWAY_NAME, COMPONENT, options), spec={
            "podSelector": {"matchLabels": selector(GATEWAY_NAME)}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": spec.gateway.port}]}]}),
    ]


def gateway_objects(source: YardSpec, options: RenderOptions) -> list[Manifest]:
    check_no_secrets(source)
    spec = cluster_spec(source)
    return [*rbac(options), config_map(spec, options), deployment(spec, source, options),
            *service_and_scaling(spec, options)]


def redis_objects(options: RenderOptions) -> list[Manifest]:
    """One Redis for the limits (counters that live minutes: no persistence); only the gateway reaches it."""
    m = meta(REDIS_NAME, "redis", options)
    container = {
        "name": "redis", "image": options.images.redis,
        "command": ["redis-server", "--save", "", "--appendonly", "no", "--maxmemory", "256mb",
                    "--maxmemory-policy", "volatile-lru"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "250m", "memory": "320Mi"}, "limits": {"memory": "384Mi"}},
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
        "securityContext": {**restricted_security(), "runAsNonRoot": True},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    pod = {"automountServiceAccountToken": False, "enableServiceLinks": False,
           "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                               "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [container], "volumes": [{"name": "data", "emptyDir": {}}],
           "nodeSelector": dict(options.cpu_node_selector)}
    return [
        obj("apps/v1", "StatefulSet", m, spec={
            "serviceName": REDIS_NAME, "replicas": 1, "selector": {"matchLabels": selector(REDIS_NAME)},
            "template": {"metadata": {"labels": m["labels"]}, "spec": pod}}),
        obj("v1", "Service", m, spec={"selector": selector(REDIS_NAME), "ports": [
            {"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}]}),
        obj("networking.k8s.io/v1", "NetworkPolicy", m, spec={
            "podSelector": {"matchLabels": selector(REDIS_NAME)}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": selector(GATEWAY_NAME)}}],
                         "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}]}),
    ]
