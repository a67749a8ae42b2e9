"""One model's engine in Kubernetes: its Deployment (the adapter's own launch plan, the same code path as
`modelyard up --dry-run`), headless Service, PodDisruptionBudget and NetworkPolicy.

A model whose engine publishes KV events (vLLM with `kv_events: true`) publishes them on TCP on its pod's network,
at two named ports (KV_EVENTS_PORT_NAME, KV_REPLAY_PORT_NAME) that its Service lists too, so that the gateway finds
them in the EndpointSlices beside each pod's IP (gateway/discovery.py); its NetworkPolicy lets only the gateway's
pods reach them (the events carry the prompts' token ids)."""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.deploy import kube_probes
from modelyard.deploy.kube_common import (
    ENGINE_PORT,
    ENGINE_PORT_NAME,
    GATEWAY_NAME,
    GPU_RESOURCE,
    KV_EVENTS_PORT,
    KV_REPLAY_PORT,
    MODEL_ANNOTATION,
    WEIGHTS_VOLUME,
    Manifest,
    RenderOptions,
    meta,
    obj,
    object_name,
    pdb,
    restricted_security,
    selector,
)
from modelyard.engines import EngineAdapter, LaunchPlan
from modelyard.spec.names import KV_EVENTS_PORT_NAME, KV_REPLAY_PORT_NAME
from modelyard.spec.schema import AnyModel

COMPONENT = "engine"


class RenderError(Exception):
    """The spec cannot be rendered for Kubernetes as it is; the message says why."""


def engine_pod(adapter: EngineAdapter, model: AnyModel) -> LaunchPlan:
    """The adapter's launch plan on 0.0.0.0:8000, as a container of its image runs it (with its weight mounts)."""
    plan = adapter.container_launch(model, "0.0.0.0", ENGINE_PORT)
    if plan is None:
        raise RenderError(f"{model.name}: engine {adapter.name} has no launch plan")
    events = adapter.kv_events_at(model, "*", KV_EVENTS_PORT, KV_REPLAY_PORT)  # bound on every pod interface
    return plan if events is None else adapter.with_kv_events(model, plan, events)


def kv_ports(adapter: EngineAdapter, model: AnyModel) -> list[tuple[str, int]]:
    """The named ports of its KV events (events, replay), or none."""
    events = adapter.kv_events_at(model, "*", KV_EVENTS_PORT, KV_REPLAY_PORT)
    if events is None:
        return []
    return [(KV_EVENTS_PORT_NAME, KV_EVENTS_PORT)] + ([(KV_REPLAY_PORT_NAME, KV_REPLAY_PORT)] if events.replay else [])


def _quantity_cpu(cpus: float) -> str:
    return str(int(cpus)) if cpus == int(cpus) else f"{round(cpus * 1000)}m"


def _quantity_mib(gib: float) -> str:
    return f"{round(gib * 1024)}Mi"


def container_resources(adapter: EngineAdapter, model: AnyModel) -> tuple[Manifest, float]:
    """Requests and limits from the adapter's share (a GPU engine: its tensor x pipeline parallel GPUs, at least
    2 CPUs per GPU to tokenize and schedule); and the /dev/shm size (GiB) that tensor parallel needs."""
    share = adapter.resources(model)
    gpus = share.gpus
    cpus = max(share.cpus, 2.0 * gpus, 0.25)
    memory = share.memory_gib or (16.0 * gpus if gpus else 0.5)
    shm = float(max(2, 4 * gpus)) if gpus else 0.0
    requests: Manifest = {"cpu": _quantity_cpu(cpus), "memory": _quantity_mib(memory)}
    limits: Manifest = {"memory": _quantity_mib(memory + shm)}  # a memory-backed /dev/shm counts here
    if gpus:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}, shm


def tokenizer_mounts(adapter: EngineAdapter, model: AnyModel) -> tuple[str, ...]:
    """The weights volume's folders that the gateway's pod mounts for a model whose tokenizer it loads itself
    (`tokenizer: local`): `tokenizer_path`, else the folders the engine's own container mounts (the gateway finds
    the tokenizer in them as the engine finds its weights)."""
    if model.tokenizer != "local":
        return ()
    if model.tokenizer_path is not None:
        return (model.tokenizer_path.rstrip("/") or "/",)
    return engine_pod(adapter, model).mounts


def weights_volume(options: RenderOptions) -> Manifest:
    weights = options.weights
    source: Manifest = ({"hostPath": {"path": weights.host_path, "type": "Directory"}} if weights.host_path
                        else {"persistentVolumeClaim": {"claimName": weights.claim, "readOnly": True}})
    return {"name": WEIGHTS_VOLUME, **source}


def weights_mounts(paths: Iterable[str]) -> list[Manifest]:
    """Each path mounted read-only from the weights volume's folder of the same name (without the leading /)."""
    return [{"name": WEIGHTS_VOLUME, "mountPath": path, "subPath": path.lstrip("/"), "readOnly": True}
            for path in paths]


def _volumes(pod: LaunchPlan, shm_gib: float, options: RenderOptions) -> tuple[list[Manifest], list[Manifest]]:
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
    if shm_gib:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{int(shm_gib)}Gi"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if pod.mounts:
        volumes.append(weights_volume(options))
        mounts += weights_mounts(pod.mounts)
    return volumes, mounts


def _container(adapter: EngineAdapter, model: AnyModel, pod: LaunchPlan, image: str,
               resources: Manifest, mounts: list[Manifest], gpu: bool) -> Manifest:
    # GPU engine images (vLLM's, SGLang's) run as root and write caches under $HOME: only escalation is refused
    security = restricted_security(read_only_root=False) if gpu else {
        **restricted_security(), "runAsNonRoot": True}
    return {
        "name": "engine", "image": image, "command": pod.argv,
        "env": [{"name": k, "value": v} for k, v in sorted(pod.env.items())],
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"}
                  for name, port in [(ENGINE_PORT_NAME, ENGINE_PORT), *kv_ports(adapter, model)]],
        "resources": resources,
        "startupProbe": kube_probes.startup(adapter, model, gpu),
        "readinessProbe": kube_probes.readiness(adapter, model),
        "livenessProbe": kube_probes.liveness(adapter),
        "lifecycle": {"preStop": kube_probes.pre_stop(adapter, model)},
        "volumeMounts": mounts, "securityContext": security,
    }


def deployment(adapter: EngineAdapter, model: AnyModel, image: str, replicas: int | None,
               options: RenderOptions) -> Manifest:
    """`replicas` None: an autoscaler owns the count (left out so that a re-apply does not reset it)."""
    name = object_name(model.name)
    pod = engine_pod(adapter, model)
    resources, shm = container_resources(adapter, model)
    gpu = GPU_RESOURCE in resources["requests"]
    volumes, mounts = _volumes(pod, shm, options)
    pod_spec: Manifest = {
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "terminationGracePeriodSeconds": kube_probes.grace_seconds(model),
        "containers": [_container(adapter, model, pod, image, resources, mounts, gpu)],
        "volumes": volumes,
        "nodeSelector": dict(options.gpu_node_selector if gpu else options.cpu_node_selector),
    }
    if gpu:
        pod_spec["tolerations"] = [dict(t) for t in options.gpu_tolerations]
    else:
        pod_spec["securityContext"] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    # a GPU replica cannot surge onto a GPU that is not free: replace one at a time instead
    strategy = {"maxSurge": 0, "maxUnavailable": 1} if gpu else {"maxSurge": 1, "maxUnavailable": 0}
    annotations = {MODEL_ANNOTATION: model.name, "modelyard.dev/engine": adapter.name}
    spec: Manifest = {"selector": {"matchLabels": selector(name)},
                      "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
                      "template": {"metadata": {"labels": meta(name, COMPONENT, options)["labels"],
                                                "annotations": annotations},
                                   "spec": pod_spec}}
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return obj("apps/v1", "Deployment", meta(name, COMPONENT, options, annotations), spec=spec)


def service(adapter: EngineAdapter, model: AnyModel, options: RenderOptions) -> Manifest:
    """Headless: its EndpointSlices list every replica, ready or not, which the gateway routes to itself, with
    every port named here (the KV events' too: where the gateway subscribes to each pod)."""
    name = object_name(model.name)
    ports = [(ENGINE_PORT_NAME, ENGINE_PORT), *kv_ports(adapter, model)]
    return obj("v1", "Service", meta(name, COMPONENT, options, {MODEL_ANNOTATION: model.name}), spec={
        "clusterIP": "None", "publishNotReadyAddresses": False, "selector": selector(name),
        "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
    })


def network_policy(adapter: EngineAdapter, model: AnyModel, options: RenderOptions) -> Manifest:
    """Only the gateway's pods reach the engine (and Prometheus, from its namespace, for /metrics on that port);
    its KV events' ports, only the gateway's pods."""
    name = object_name(model.name)
    port = [{"protocol": "TCP", "port": ENGINE_PORT}]
    gateway = [{"podSelector": {"matchLabels": selector(GATEWAY_NAME)}}]
    ingress: list[Manifest] = [
        {"from": gateway, "ports": port},
        {"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": options.monitoring_namespace}}}], "ports": port}]
    if events := kv_ports(adapter, model):
        ingress.append({"from": gateway, "ports": [{"protocol": "TCP", "port": p} for _, p in events]})
    return obj("networking.k8s.io/v1", "NetworkPolicy", meta(name, COMPONENT, options), spec={
        "podSelector": {"matchLabels": selector(name)}, "policyTypes": ["Ingress"], "ingress": ingress})


def engine_objects(adapter: EngineAdapter, model: AnyModel, image: str, replicas: int | None,
                   options: RenderOptions) -> list[Manifest]:
    name = object_name(model.name)
    return [deployment(adapter, model, image, replicas, options), service(adapter, model, options),
            pdb(name, COMPONENT, options), network_policy(adapter, model, options)]
