from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from modelyard.simulator.run import SimulatorThread
from tests.simulator.conftest import StartSimulator, client_for
from tests.simulator.helpers import eventually, metric

LONG_PROMPT = " ".join(f"word{i}" for i in range(100))


def test_chat_completion(sim: SimulatorThread) -> None:
    reply = client_for(sim).chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "Hello there"}], max_completion_tokens=5)
    assert reply.choices[0].message.role == "assistant"
    assert len(reply.choices[0].message.content.split()) == 5  # type: ignore[union-attr]
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_completion_without_max_tokens_stops_at_the_profile_default(sim: SimulatorThread) -> None:
    reply = client_for(sim).completions.create(model="sim", prompt="Say something")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == sim.app.profile.default_max_tokens
    assert reply.usage.prompt_tokens == 2


def test_streamed_chat_with_usage(sim: SimulatorThread) -> None:
    stream = client_for(sim).chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_completion_ends_with_done(sim: SimulatorThread) -> None:
    with httpx.stream("POST", sim.url + "/v1/completions",
                      json={"model": "sim", "prompt": "Hi", "max_tokens": 3, "stream": True}) as resp:
        body = resp.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) == 4
    assert '"usage"' not in body


def test_repeated_prefix_is_reported_cached(sim: SimulatorThread) -> None:
    client = client_for(sim)
    first = client.completions.create(model="sim", prompt=LONG_PROMPT, max_tokens=1)
    second = client.completions.create(model="sim", prompt=LONG_PROMPT + " and more", max_tokens=1)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 96  # 6 full blocks of 16 of the 100 shared tokens
    assert metric(sim.url, "vllm:prefix_cache_hits_total") == 96
    assert metric(sim.url, "vllm:prefix_cache_queries_total") == 100 + 102


def test_reset_prefix_cache_forgets_cached_prompts(sim: SimulatorThread) -> None:
    client = client_for(sim)
    client.completions.create(model="sim", prompt=LONG_PROMPT, max_tokens=1)
    assert httpx.post(sim.url + "/reset_prefix_cache").status_code == 200
    again = client.completions.create(model="sim", prompt=LONG_PROMPT, max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == 0
    assert metric(sim.url, "vllm:prefix_cache_hits_total") == 0


def test_eviction_at_small_capacity(start_simulator: StartSimulator) -> None:
    sim = start_simulator(kv_blocks=10)
    client = client_for(sim)

    def cached(prompt: str) -> int:
        usage = client.completions.create(model="sim", prompt=prompt, max_tokens=1).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens_details.cached_tokens or 0

    a = " ".join(f"a{i}" for i in range(80))  # 5 full blocks
    b = " ".join(f"b{i}" for i in range(112))  # 7 full blocks + 1 for the last token and the reply
    cached(a)
    assert cached(a) == 64  # (80 - 1) // 16 = 4 blocks may hit
    cached(b)  # 5 + 8 blocks > 10: a's three tail blocks are evicted, its head stays
    assert cached(a) == 32
    with pytest.raises(openai.BadRequestError, match="KV cache"):
        client.completions.create(model="sim", prompt=" ".join(["x"] * 200), max_tokens=1)


def test_metrics_move(sim: SimulatorThread) -> None:
    assert metric(sim.url, "vllm:generation_tokens_total") == 0
    client_for(sim).completions.create(model="sim", prompt="count me", max_tokens=3)
    assert metric(sim.url, "vllm:generation_tokens_total") == 3
    assert metric(sim.url, "vllm:prompt_tokens_total") == 2
    assert metric(sim.url, "vllm:time_to_first_token_seconds_count") == 1
    assert metric(sim.url, "vllm:inter_token_latency_seconds_count") == 2
    assert metric(sim.url, "vllm:e2e_request_latency_seconds_count") == 1
    assert metric(sim.url, "vllm:num_requests_running") == 0
    assert metric(sim.url, "vllm:kv_cache_usage_perc") == 0


def test_models_and_unknown_model(sim: SimulatorThread) -> None:
    client = client_for(sim)
    assert [m.id for m in client.models.list()] == ["sim"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=1)


def test_context_length_is_enforced(sim: SimulatorThread) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client_for(sim).completions.create(model="sim", prompt="x", max_tokens=10_000)


def test_tokenize_in_vllm_format(sim: SimulatorThread) -> None:
    answer = httpx.post(sim.url + "/tokenize", json={"model": "sim", "prompt": "Hello, world"}).json()
    assert answer["count"] == 3 and len(answer["tokens"]) == 3
    assert answer["max_model_len"] == sim.app.profile.max_model_len
    chat = httpx.post(sim.url + "/tokenize", json={"model": "sim", "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["count"] > 1
    usage = client_for(sim).chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "Hi"}], max_tokens=1).usage
    assert usage is not None and usage.prompt_tokens == chat.json()["count"]
    assert httpx.post(sim.url + "/tokenize", json={"model": "sim"}).status_code == 400


def test_render_returns_token_ids(sim: SimulatorThread) -> None:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 7}
    answer = httpx.post(sim.url + "/v1/chat/completions/render", json=body).json()
    tokens = httpx.post(sim.url + "/tokenize", json=body).json()["tokens"]
    assert answer["token_ids"] == tokens and answer["sampling_params"]["max_tokens"] == 7
    assert httpx.get(sim.url + "/v1/chat/completions/render").status_code == 405
    assert httpx.get(sim.url + "/nothing").status_code == 404


def test_sleep_and_wake(sim: SimulatorThread) -> None:
    assert httpx.get(sim.url + "/is_sleeping").json() == {"is_sleeping": False}
    assert httpx.post(sim.url + "/sleep?level=2").status_code == 200
    assert httpx.get(sim.url + "/is_sleeping").json() == {"is_sleeping": True}
    assert httpx.get(sim.url + "/health").status_code == 200
    with pytest.raises(openai.InternalServerError) as failure:
        client_for(sim).completions.create(model="sim", prompt="x", max_tokens=1)
    assert failure.value.status_code == 503
    assert httpx.post(sim.url + "/sleep?level=3").status_code == 400
    assert httpx.post(sim.url + "/wake_up").status_code == 200
    assert httpx.get(sim.url + "/is_sleeping").json() == {"is_sleeping": False}
    assert client_for(sim).completions.create(model="sim", prompt="x", max_tokens=1).choices


def test_invalid_json(sim: SimulatorThread) -> None:
    resp = httpx.post(sim.url + "/v1/completions", content=b"{not json")
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "BadRequestError"


def test_streams_through_plain_asgi_send_without_uvicorn() -> None:
    """Under an ASGI server other than uvicorn's httptools one, tokens go through `send` (no direct writer)."""
    from modelyard.simulator.profiles import resolve_profile
    from modelyard.simulator.server import Simulator
    from tests.simulator.conftest import FAST

    async def run() -> str:
        app = Simulator(resolve_profile("tiny-cpu", FAST), "sim")
        engine = asyncio.create_task(app.scheduler.run())
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
                resp = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True})
                return resp.text
        finally:
            engine.cancel()

    events = [e for e in asyncio.run(run()).split("\n\n") if e]
    assert len(events) == 4 and events[-1] == "data: [DONE]"


@pytest.mark.parametrize(("task", "path", "status"), [
    ("chat", "/v1/embeddings", 404), ("chat", "/rerank", 404), ("chat", "/v1/rerank", 404),
    ("embedding", "/v1/chat/completions", 404), ("embedding", "/v1/completions", 404),
    ("embedding", "/v1/chat/completions/render", 404), ("rerank", "/v1/embeddings", 404),
    ("rerank", "/v1/completions", 404), ("embedding", "/rerank", 200), ("rerank", "/v2/rerank", 200),
])
def test_each_task_serves_only_its_apis(start_simulator: StartSimulator, task: str, path: str, status: int) -> None:
    """As vLLM, which registers an API's routes only for a model whose task has it."""
    sim = start_simulator(task=task)
    body = {"model": "sim", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}], "input": "Hi",
            "query": "Hi", "documents": ["Hello"], "max_tokens": 1}
    resp = httpx.post(sim.url + path, json=body)
    assert resp.status_code == status
    if status == 404:
        assert resp.json()["error"]["message"].startswith("The model does not support")


def test_a_pooling_model_keeps_the_operational_endpoints(start_simulator: StartSimulator) -> None:
    sim = start_simulator(task="embedding")
    assert httpx.post(sim.url + "/tokenize", json={"prompt": "Hello, world"}).json()["count"] == 3
    assert [m.id for m in client_for(sim).models.list()] == ["sim"]
    assert httpx.post(sim.url + "/sleep").status_code == 200
    assert httpx.post(sim.url + "/v1/embeddings", json={"input": "x"}).status_code == 503
    assert httpx.post(sim.url + "/wake_up").status_code == 200
    assert httpx.post(sim.url + "/v1/embeddings", json={"input": "x"}).status_code == 200


def test_embeddings_show_as_running_and_waiting_while_served(start_simulator: StartSimulator) -> None:
    """Each input is a prefill of its own in the engine's batch: with one slot, one runs while the other waits."""
    sim = start_simulator(task="embedding", max_num_seqs=1, prefill_s_per_token=0.02)
    text = " ".join(f"w{i}" for i in range(25))
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.post, sim.url + "/v1/embeddings", json={"input": [text, text]}, timeout=30)
        eventually(lambda: metric(sim.url, "vllm:num_requests_running") == 1
                   and metric(sim.url, "vllm:num_requests_waiting") == 1)
        assert future.result().status_code == 200
    assert metric(sim.url, "vllm:num_requests_running") == 0 and metric(sim.url, "vllm:num_requests_waiting") == 0
    assert metric(sim.url, "vllm:prompt_tokens_total") == 50
    assert metric(sim.url, "vllm:generation_tokens_total") == 0
    assert metric(sim.url, "vllm:e2e_request_latency_seconds_count") == 2


def test_rerank_shows_as_running_while_served(start_simulator: StartSimulator) -> None:
    sim = start_simulator(task="rerank", prefill_s_per_token=0.02)
    body = {"query": " ".join(f"w{i}" for i in range(25)), "documents": ["a", "b"]}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.post, sim.url + "/rerank", json=body, timeout=30)
        eventually(lambda: metric(sim.url, "vllm:num_requests_running") == 2)
        assert future.result().status_code == 200
    assert metric(sim.url, "vllm:num_requests_running") == 0
