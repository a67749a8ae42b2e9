"""`tokenizer: local` through `modelyard up`: the gateway and its simulator replicas load the same tokenizer
directory (tests/tokenizer_dir.py). The precise profile routes with block keys computed in the gateway, which are
the keys of the replicas' KV events; and a key with a token budget reserves each prompt's real count (the local
tokenizer, the precise router's, or the engine's /tokenize), so that concurrent requests cannot pass the budget on
an estimate that was too low (issue 15), where the body-size estimate lets them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from modelyard.fleet.process import free_port
from tests.cluster import API_KEY, Cluster
from tests.tokenizer_dir import CHAT_TEMPLATE, make_tokenizer_dir

ADMIN = "admin-" + "z" * 24
REPLICAS = 2
TOPICS = ("billing", "shipping")
# a template that writes a long preamble: a short body makes many tokens (the body-size estimate is far below)
PREAMBLE = "Remember: refunds take five days, packages leave the warehouse each morning, bolts are in aisle seven. "
LONG_TEMPLATE = "{{ bos_token }}" + PREAMBLE * 12 + CHAT_TEMPLATE.removeprefix("{{ bos_token }}")
FAST = {"itl_base_s": 0.001, "prefill_overhead_s": 0.3, "prefill_s_per_token": 0.00001}  # 10 at once overlap


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("local-tokenizer")
    directory = str(make_tokenizer_dir(tmp / "tokenizer", chat_template=LONG_TEMPLATE))
    models = [
        {"name": "sticky", "engine": "simulator", "replicas": REPLICAS, "kv_events": True, "tokenizer": "local",
         "tokenizer_path": directory, "params": {**FAST, "prefill_overhead_s": 0.001}},
        {"name": "local", "engine": "simulator", "tokenizer": "local", "tokenizer_path": directory, "params": FAST},
        {"name": "precise", "engine": "simulator", "kv_events": True, "tokenizer": "local",
         "tokenizer_path": directory, "params": FAST},
        {"name": "engine", "engine": "simulator", "params": FAST},  # its own tokenizer, through its /tokenize
    ]
    running = Cluster(tmp, models, gateway={"workers": 1}, env={"MODELYARD_ADMIN_KEY": ADMIN},
                      extra={"store": {"usage_flush_interval_s": 0.1}})
    running.start()
    yield running
    running.stop()


def replica_urls(cluster: Cluster) -> dict[str, str]:
    return {str(n): cluster.replica_url("sticky", n) for n in range(REPLICAS)}


def chat(model: str, system: str, question: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1, "messages": [{"role": "system", "content": system},
                                                         {"role": "user", "content": question}]}


def test_the_precise_profile_routes_with_the_local_tokenizers_keys(cluster: Cluster) -> None:
    urls = replica_urls(cluster)
    systems = {t: f"You are the assistant of the {t} desk. " + f"Always answer about {t}, briefly. " * 30
               for t in TOPICS}
    for replica, topic in zip(sorted(urls), TOPICS, strict=True):  # each prefix warmed on one replica, directly
        warm = httpx.post(urls[replica] + "/v1/chat/completions", json=chat("sticky", systems[topic], "warm up"))
        assert warm.status_code == 200, warm.text
    time.sleep(0.5)
    for replica, topic in zip(sorted(urls), TOPICS, strict=True):
        for n in range(4):
            reply = httpx.post(cluster.url + "/v1/chat/completions", timeout=30,
                               json=chat("sticky", systems[topic], f"Where is order {n}?"),
                               headers={"Authorization": f"Bearer {API_KEY}"})
            assert reply.status_code == 200, reply.text
            usage = reply.json()["usage"]
            assert reply.headers["x-modelyard-replica"] == f"sticky/{replica}", (topic, n)
            assert usage["prompt_tokens_details"]["cached_tokens"] >= 0.8 * usage["prompt_tokens"]


def new_key(cluster: Cluster, budget: int) -> str:
    reply = httpx.post(cluster.url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10,
                       json={"name": f"team-{time.monotonic_ns()}", "budget_tokens": budget})
    assert reply.status_code == 201, reply.text
    secret: str = reply.json()["secret"]
    return secret


async def wave(cluster: Cluster, key: str, body: dict[str, Any], count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return list(await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(count))))


@pytest.mark.parametrize(("model", "body"), [
    ("local", chat("local", "Be brief.", "hi")),  # the gateway's own tokenizer
    ("precise", chat("precise", "Be brief.", "hi")),  # the count the precise router found with the keys
    ("engine", chat("engine", "Be brief.", "," * 600)),  # the engine's /tokenize: a token a byte, estimated 0.5
])
def test_concurrent_requests_cannot_pass_a_budget_on_a_low_estimate(cluster: Cluster, model: str,
                                                                    body: dict[str, Any]) -> None:
    # the prompt's count from the replica itself (through the gateway, the answer would teach it the ratio)
    answer = httpx.post(cluster.replica_url(model, 0) + "/tokenize", json=body, timeout=10).json()
    prompt = answer["count"]
    assert prompt > 0.75 * len(orjson.dumps(body))  # the first estimate, 0.5 a body byte, is far below
    budget = prompt * 2 + 1  # two requests fit
    key = new_key(cluster, budget)
    replies = asyncio.run(wave(cluster, key, body, 10))
    served = [r.json()["usage"]["total_tokens"] for r in replies if r.status_code == 200]
    assert served and sum(served) <= budget, (len(served), sum(served), budget)
    assert {r.status_code for r in replies} <= {200, 429}


def test_up_refuses_a_broken_tokenizer_naming_the_file(tmp_path: Path) -> None:
    directory = make_tokenizer_dir(tmp_path / "tokenizer")
    (directory / "tokenizer_config.json").write_text('{"chat_template": ')
    spec = {"version": 1, "state_dir": str(tmp_path / "state"), "gateway": {"port": free_port()},
            "models": [{"name": "sim", "engine": "simulator", "tokenizer": "local", "tokenizer_path": str(directory)}]}
    (tmp_path / "yard.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "modelyard", "up", "-f", str(tmp_path / "yard.yaml")],
                          capture_output=True, text=True, timeout=60)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert f"model 'sim': tokenizer: {directory}/tokenizer_config.json: not valid JSON" in output
    assert "Traceback" not in output
