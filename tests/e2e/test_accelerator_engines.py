"""`modelyard up` with engine: vllm and engine: sglang, whose binaries are stand-ins (tests/engine_clis.py) that
accept exactly the real CLIs' flags (recorded in tests/data), log what they were started with, and serve the
simulator: the whole path from yard.yaml to a routed request runs here, without GPUs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from modelyard.engines import get_engine
from modelyard.spec.loader import load_spec
from tests.cluster import API_KEY, Cluster

ROOT = Path(__file__).resolve().parents[2]


def stand_in(tmp: Path, engine: str) -> str:
    path = tmp / f"fake-{engine}"
    # the log's path is the script's own: a replica's environment is not up's (fleet/child_env.py)
    path.write_text(f"#!/bin/sh\nENGINE_CLI_LOG={tmp / 'engines.jsonl'} PYTHONPATH={ROOT} "
                    f"exec {sys.executable} -m tests.engine_clis {engine} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def models(tmp: Path) -> list[dict[str, object]]:
    weights = tmp / "weights"
    weights.mkdir(exist_ok=True)
    (weights / "config.json").write_text(json.dumps({"rope_theta": 1000000.0}))
    seed = {"model": {"path": str(weights)}, "quantization": "fp8", "kv_cache_dtype": "fp8", "tensor_parallel": 2,
            "max_context": 131072, "seed": 0, "enable_prefix_caching": False, "max_num_seqs": 8,
            "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32768}}
    return [
        {"name": "qwen", "engine": "vllm", "binary": stand_in(tmp, "vllm"), "replicas": 2, "gpus": [0, 1, 2, 3],
         "sleep_mode": True, "env": {"HF_TOKEN": "hf_secret_value"}, **seed},
        {"name": "qwen-sg", "engine": "sglang", "binary": stand_in(tmp, "sglang"), "gpus": [4, 5], **seed},
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("accelerators")
    running = Cluster(tmp, models(tmp)).start(timeout_s=60)
    yield running
    running.stop()


def started(cluster: Cluster) -> list[dict[str, Any]]:
    lines = (cluster.tmp / "engines.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_vllm_and_sglang_replicas_start_with_the_seeds_arguments_and_serve(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)
    for name in ("qwen", "qwen-sg"):
        reply = client.chat.completions.create(model=name, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    runs = started(cluster)
    vllm = [r for r in runs if r["argv"][0] == "vllm"]
    assert len(vllm) == 2 and len(runs) == 3  # each replica started once: every flag was accepted
    assert sorted(r["env"]["CUDA_VISIBLE_DEVICES"] for r in vllm) == ["0,1", "2,3"]
    argv = " ".join(vllm[0]["argv"])
    for part in ("--quantization fp8 --kv-cache-dtype fp8", "--tensor-parallel-size 2", "--max-model-len 131072",
                 '"rope_type":"yarn","factor":4.0', "--disable-prefix-caching", "--seed 0", "--enable-sleep-mode"):
        assert part in argv
    assert all(r["env"]["HF_HUB_OFFLINE"] == "1" for r in runs)


def test_sleep_and_wake_on_the_replicas_own_port_never_through_the_gateway(cluster: Cluster) -> None:
    reply = httpx.post(cluster.url + "/sleep?level=1", headers={"Authorization": f"Bearer {API_KEY}"})
    assert reply.status_code in (404, 405)
    argv = next(r["argv"] for r in started(cluster) if r["argv"][0] == "vllm")  # the three start in any order
    port = argv[argv.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    spec = load_spec(cluster.spec_path)
    model = next(m for m in spec.models if m.name == "qwen")
    engine = get_engine("vllm")

    async def cycle() -> tuple[str | None, str | None, str | None, str | None]:
        async with aiohttp.ClientSession() as session:
            slept = await engine.sleep(session, url, model, level=1)
            asleep = await engine.probe(session, url, model)
            woke = await engine.wake(session, url, model)
            return slept, asleep, woke, await engine.probe(session, url, model)

    slept, asleep, woke, awake = asyncio.run(cycle())
    assert slept is None and asleep is not None and woke is None and awake is None


def test_dry_run_prints_the_same_command_lines_and_masks_secrets(cluster: Cluster) -> None:
    out = subprocess.run([sys.executable, "-m", "modelyard", "up", "--dry-run", "-f", str(cluster.spec_path)],
                         capture_output=True, text=True, timeout=60, env={**cluster.env, "COLUMNS": "400"})
    assert out.returncode == 0, out.stderr
    assert "HF_TOKEN=***" in out.stdout and "hf_secret_value" not in out.stdout
    assert "PATH=" in out.stdout and "MODELYARD_API_KEY" not in out.stdout  # the whole environment, less up's secrets
    assert out.stdout.count("--hf-overrides") == 2 and "--json-model-override-args" in out.stdout
    assert "CUDA_VISIBLE_DEVICES=2,3" in out.stdout and "CUDA_VISIBLE_DEVICES=4,5" in out.stdout
    assert len(started(cluster)) == 3  # it started nothing
