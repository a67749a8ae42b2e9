"""What every rendered Kubernetes object shares: the render options (images, namespace, weights volume, node
placement), labels, object metadata, and the ports and names that the gateway's discovery relies on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard import __version__
from modelyard.engines.llamacpp import LlamaCppEngine
from modelyard.engines.sglang import SGLangEngine
from modelyard.engines.vllm import VLLMEngine
from modelyard.spec.names import SERVICE_PREFIX, service_name

Manifest = dict[str, Any]
Autoscaler = Literal["keda", "hpa"]

ENGINE_PORT = 8000  # every engine container listens here (port name "http"); the gateway's discovery reads it
ENGINE_PORT_NAME = "http"
# a model with KV events publishes them here (vLLM's defaults), on the pod's network; only the gateway may connect
KV_EVENTS_PORT, KV_REPLAY_PORT = 5557, 5558
GATEWAY_NAME = "modelyard-gateway"
REDIS_NAME = "modelyard-redis"
CONFIG_NAME = "modelyard-config"
WEIGHTS_VOLUME = "weights"
CONFIG_PATH = "/etc/modelyard/yard.yaml"
STATE_DIR = "/var/lib/modelyard"  # the gateway's state_dir in a pod: an emptyDir (the spec file is read-only)
NON_ROOT_UID = 10001  # the Containerfile's user
PART_OF = "modelyard"
MODEL_ANNOTATION = "modelyard.dev/model"  # the model's name as yard.yaml spells it (a label cannot hold every name)
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Images:
    modelyard: str = f"modelyard:{__version__}"  # the gateway, and the simulator's engine
    # each engine's own default (its adapter's `image`); the fields are named by engine, as `--<engine>-image`
    vllm: str = str(VLLMEngine.image)
    sglang: str = str(SGLangEngine.image)
    llamacpp: str = str(LlamaCppEngine.image)
    redis: str = "redis:7.4.6-alpine"


@dataclass(frozen=True)
class Weights:
    """Where the engines' weights were put beforehand: one volume, mounted read-only at each model's path (the
    volume's folders mirror the paths in yard.yaml, without the leading /)."""

    claim: str = "modelyard-weights"  # a PersistentVolumeClaim (rendered: ReadWriteMany, so a Job can fill it) ...
    host_path: str | None = None  # ... or a folder on every GPU node instead
    storage_class: str | None = None
    size: str = "500Gi"


@dataclass(frozen=True)
class RenderOptions:
    namespace: str = "modelyard"
    autoscaler: Autoscaler = "keda"
    images: Images = Images()
    weights: Weights = Weights()
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"  # what KEDA asks
    monitoring_namespace: str = "monitoring"  # Prometheus' pods scrape the engines from there
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    cpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Manifest, ...] = (
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)


def object_name(model_name: str) -> str:
    return service_name(model_name)


def file_stem(model_name: str) -> str:
    return "model-" + service_name(model_name).removeprefix(SERVICE_PREFIX)


def labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": "modelyard"}


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def meta(name: str, component: str, options: RenderOptions, annotations: dict[str, str] | None = None) -> Manifest:
    out: Manifest = {"name": name, "namespace": options.namespace, "labels": labels(name, component)}
    if annotations:
        out["annotations"] = annotations
    return out


def obj(api_version: str, kind: str, metadata: Manifest, **body: Any) -> Manifest:
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def pdb(name: str, component: str, options: RenderOptions, max_unavailable: int = 1) -> Manifest:
    return obj("policy/v1", "PodDisruptionBudget", meta(name, component, options),
               spec={"maxUnavailable": max_unavailable, "selector": {"matchLabels": selector(name)}})


def seconds(value: float) -> int:
    return max(1, round(value))


def restricted_security(read_only_root: bool = True) -> Manifest:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": read_only_root,
            "capabilities": {"drop": ["ALL"]}}
