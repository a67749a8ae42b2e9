"""vLLM's command line from yard.yaml, pinned, and checked against the flags of the real `vllm serve --help`
(recorded from vLLM 0.33.0 in tests/data: a flag we emit that vLLM no longer knows fails here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.engines import EngineError, get_engine
from modelyard.engines.base import Task
from modelyard.spec import SpecError
from modelyard.spec.loader import parse_spec
from modelyard.spec.schema import VLLMModel
from tests.engine_clis import choices, flags, options, unknown_flags

# the seed cluster's model: FP8 weights and KV cache, tensor parallel 2, YaRN 32k -> 128k, reproducible
SEED = """
version: 1
models:
  - name: qwen
    engine: vllm
    model: {path: MODEL_DIR}
    quantization: fp8
    kv_cache_dtype: fp8
    tensor_parallel: 2
    max_context: 131072
    rope_scaling: {type: yarn, factor: 4, original_max_position_embeddings: 32768}
    enable_prefix_caching: false
    seed: 1234
    gpu_memory_utilization: 0.9
    max_num_seqs: 128
    lora: [{name: sql, path: /adapters/sql}]
    sleep_mode: true
    gpus: [0, 1, 2, 3]
    replicas: 2
"""


def seed_model(tmp_path: Path, text: str = SEED) -> VLLMModel:
    weights = tmp_path / "qwen"
    weights.mkdir(exist_ok=True)
    (weights / "config.json").write_text(json.dumps({"rope_theta": 1000000.0, "max_position_embeddings": 40960}))
    model = parse_spec(text.replace("MODEL_DIR", str(weights))).models[0]
    assert isinstance(model, VLLMModel)
    return model


def test_the_seed_models_argv_and_environment(tmp_path: Path) -> None:
    model = seed_model(tmp_path)
    plan = get_engine("vllm").launch(model, "127.0.0.1", 8100, replica=1)
    assert plan.argv == [
        "vllm", "serve", str(tmp_path / "qwen"), "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "qwen", "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1",
        "--quantization", "fp8", "--kv-cache-dtype", "fp8", "--max-model-len", "131072", "--seed", "1234",
        "--gpu-memory-utilization", "0.9", "--max-num-seqs", "128",
        "--hf-overrides", '{"rope_parameters":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":'
                          '32768,"rope_theta":1000000.0},"max_position_embeddings":131072}',
        "--disable-prefix-caching", "--enable-lora", "--lora-modules", "sql=/adapters/sql", "--enable-sleep-mode",
    ]
    assert plan.env == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "2,3",
                        "VLLM_SERVER_DEV_MODE": "1"}


def test_every_flag_we_emit_is_one_vllm_knows(tmp_path: Path) -> None:
    engine = get_engine("vllm")
    seed = seed_model(tmp_path)
    variants = [seed, seed.model_copy(update={"task": "embedding"}), seed.model_copy(update={"task": "rerank"}),
                seed.model_copy(update={"enable_prefix_caching": True, "sleep_mode": False, "lora": ()})]
    known = choices("vllm")
    for model in variants:
        argv = engine.launch(model, "127.0.0.1", 8000, 0).argv
        assert unknown_flags("vllm", argv[3:]) == []
        opts = options(argv)
        for option in ("--quantization", "--kv-cache-dtype", "--runner"):
            if option in opts:
                assert opts[option] in known[option], (option, opts[option])
    assert {"--enable-prefix-caching", "--disable-prefix-caching", "--hf-overrides"} <= flags("vllm")


def test_the_recorded_cli_is_vllms_own() -> None:
    """Guards the guard: flags that vLLM removed are not in the recording, so emitting them would fail above."""
    assert "--rope-scaling" not in flags("vllm") and "--task" not in flags("vllm")
    assert unknown_flags("vllm", ["--rope-scaling", "{}"]) == ["--rope-scaling"]


def test_pooling_tasks_run_vllms_pooling_runner(tmp_path: Path) -> None:
    model = seed_model(tmp_path).model_copy(update={"task": "embedding"})
    argv = get_engine("vllm").launch(model, "127.0.0.1", 8000, 0).argv
    assert argv[-2:] == ["--runner", "pooling"]
    assert get_engine("vllm").endpoints(model) == frozenset({"/v1/embeddings"})
    assert get_engine("vllm").task(seed_model(tmp_path)) is Task.CHAT


def test_each_replica_gets_its_own_gpus(tmp_path: Path) -> None:
    model = seed_model(tmp_path)
    envs = [get_engine("vllm").launch(model, "127.0.0.1", 8000, r).env["CUDA_VISIBLE_DEVICES"] for r in range(2)]
    assert envs == ["0,1", "2,3"]


def test_too_few_gpus_for_the_replicas_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"models\[0\]: gpus: 2 replica\(s\) x tensor_parallel 2 x "
                                        r"pipeline_parallel 1 need 4 GPUs, 3 listed"):
        seed_model(tmp_path, SEED.replace("gpus: [0, 1, 2, 3]", "gpus: [0, 1, 2]"))


def test_a_context_beyond_the_rope_scaling_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="max_context 262144 is beyond rope_scaling"):
        seed_model(tmp_path, SEED.replace("max_context: 131072", "max_context: 262144"))


def test_weights_come_from_a_local_cache_never_a_download(tmp_path: Path) -> None:
    text = SEED.replace("model: {path: MODEL_DIR}", f"model: {{name: Qwen/Qwen3-8B, cache_dir: {tmp_path}}}")
    model = parse_spec(text).models[0].model_copy(update={"binary": "/bin/true"})
    engine = get_engine("vllm")
    with pytest.raises(EngineError, match="not in the hub cache .* never downloads"):
        engine.prepare(model)
    snapshot = tmp_path / "models--Qwen--Qwen3-8B" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"rope_theta": 5e5}))
    engine.prepare(model)
    plan = engine.launch(model, "127.0.0.1", 8000, 0)
    assert plan.argv[2] == "Qwen/Qwen3-8B"
    assert plan.env["HF_HUB_OFFLINE"] == "1" and plan.env["HF_HUB_CACHE"] == str(tmp_path)
    assert '"rope_theta":500000.0' in options(plan.argv)["--hf-overrides"]


def test_prepare_names_a_missing_binary(tmp_path: Path) -> None:
    model = seed_model(tmp_path).model_copy(update={"binary": str(tmp_path / "no-vllm")})
    with pytest.raises(EngineError, match="not found"):
        get_engine("vllm").prepare(model)


def test_slots_and_served_name(tmp_path: Path) -> None:
    model = seed_model(tmp_path)
    engine = get_engine("vllm")
    assert engine.slots(model) == 128 and engine.slots(model.model_copy(update={"max_num_seqs": None})) == 256
    assert engine.upstream_model(model.model_copy(update={"served_model_name": "Qwen/Qwen3-8B"})) == "Qwen/Qwen3-8B"
    assert engine.can_sleep(model) and not engine.can_sleep(model.model_copy(update={"sleep_mode": False}))


def test_kv_events_on_private_ipc_sockets_with_the_chain_a_router_computes(tmp_path: Path) -> None:
    engine = get_engine("vllm")
    model = seed_model(tmp_path).model_copy(update={"kv_events": True, "kv_hash_seed": "5"})
    assert engine.publishes_kv_events(model) and not engine.publishes_kv_events(seed_model(tmp_path))
    events = engine.kv_events(model, "127.0.0.1", 1)
    assert events is not None and events.endpoint.startswith("ipc://") and events.replay != events.endpoint
    plan = engine.with_kv_events(model, engine.launch(model, "127.0.0.1", 8000, 1), events)
    assert unknown_flags("vllm", plan.argv[3:]) == []
    opts = options(plan.argv)
    assert opts["--prefix-caching-hash-algo"] == "sha256_cbor"
    assert json.loads(opts["--kv-events-config"])["endpoint"] == events.endpoint
    assert plan.env["PYTHONHASHSEED"] == "5" and plan.env["VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES"] == "1"


def test_kv_events_in_a_pod_bind_tcp_on_every_interface_and_are_reached_at_the_pods_ip(tmp_path: Path) -> None:
    engine = get_engine("vllm")
    model = seed_model(tmp_path).model_copy(update={"kv_events": True, "kv_hash_seed": "5"})
    bound = engine.kv_events_at(model, "*", 5557, 5558)  # `*`: vLLM's publisher binds instead of connecting
    assert bound is not None and (bound.endpoint, bound.replay, bound.hash_seed) == (
        "tcp://*:5557", "tcp://*:5558", "5")
    seen = engine.kv_events_at(model, "10.244.1.17", 5557, 5558)
    assert seen is not None and (seen.endpoint, seen.replay) == ("tcp://10.244.1.17:5557", "tcp://10.244.1.17:5558")
    assert engine.kv_events_at(seed_model(tmp_path), "*", 5557, 5558) is None


def test_roles_launch_every_replica_with_the_nixl_connector_on_its_own_side_channel(tmp_path: Path) -> None:
    engine = get_engine("vllm")
    model = seed_model(tmp_path, SEED.replace("replicas: 2", "roles: {prefill: 1, decode: 1}"))
    assert engine.disaggregates(model) and not get_engine("sglang").disaggregates(model)
    plans = [engine.launch(model, "127.0.0.1", 8000 + replica, replica) for replica in (0, 1)]
    ports = set()
    for plan in plans:
        assert unknown_flags("vllm", plan.argv[3:]) == []
        config = json.loads(options(plan.argv)["--kv-transfer-config"])
        assert config == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}  # nixl_connector_usage.md
        assert plan.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
        ports.add(plan.env["VLLM_NIXL_SIDE_CHANNEL_PORT"])
    assert len(ports) == 2  # two replicas of one machine: one handshake port each
    assert "--kv-transfer-config" not in engine.launch(seed_model(tmp_path), "127.0.0.1", 8000, 0).argv


def test_a_local_tokenizer_comes_from_the_weights_directory_by_default(tmp_path: Path) -> None:
    engine = get_engine("vllm")
    model = seed_model(tmp_path)
    assert engine.tokenizer_dir(model) is None  # tokenizer: engine (its /tokenize)
    local = seed_model(tmp_path, SEED + "    tokenizer: local\n")
    assert engine.tokenizer_dir(local) == tmp_path / "qwen"
    chosen = seed_model(tmp_path, SEED + "    tokenizer: local\n    tokenizer_path: /tok\n")
    assert engine.tokenizer_dir(chosen) == Path("/tok")
    hub = parse_spec(SEED.replace("model: {path: MODEL_DIR}", f"model: {{name: Qwen/Qwen3-8B, cache_dir: {tmp_path}}}")
                     + "    tokenizer: local\n").models[0]
    repo = tmp_path / "models--Qwen--Qwen3-8B"
    (repo / "snapshots" / "old").mkdir(parents=True)
    (repo / "snapshots" / "new").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("new\n")
    assert engine.tokenizer_dir(hub) == repo / "snapshots" / "new"  # the snapshot refs/main names
