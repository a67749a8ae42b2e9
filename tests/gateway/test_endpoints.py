"""What a model serves is known before routing: the gateway answers a request for an endpoint the model does not
serve itself, and an engine's answer about a request is the client's, never counted against the replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.cluster import API_KEY, Cluster
from tests.upstream import Upstream

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with (Upstream() as chat0, Upstream() as chat1, Upstream(paths=("/v1/chat/completions",)) as chat_only,
          Upstream(paths=("/v1/embeddings",)) as embed, Upstream(paths=("/v1/rerank",)) as rerank):
        yield {"chat0": chat0, "chat1": chat1, "chat_only": chat_only, "embed": embed, "rerank": rerank}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, Upstream]) -> Iterator[Cluster]:
    models = [
        {"name": "chat", "engine": "openai", "urls": [upstreams["chat0"].url, upstreams["chat1"].url], "replicas": 2},
        {"name": "chat-only", "engine": "openai", "urls": [upstreams["chat_only"].url]},
        {"name": "embed", "engine": "openai", "task": "embedding", "urls": [upstreams["embed"].url]},
        {"name": "rerank", "engine": "openai", "task": "rerank", "urls": [upstreams["rerank"].url]},
    ]
    running = Cluster(tmp_path_factory.mktemp("endpoints"), models).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def healthy(upstreams: dict[str, Upstream]) -> None:
    for upstream in upstreams.values():
        upstream.mode = "ok"


def post(cluster: Cluster, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(cluster.url + path, json=body, headers=HEADERS, timeout=30)


def test_a_server_that_serves_only_chat_becomes_ready_and_serves(cluster: Cluster) -> None:
    reply = post(cluster, "/v1/chat/completions", {"model": "chat-only", "max_tokens": 3,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    assert reply.headers["x-modelyard-replica"] == "chat-only/0"


@pytest.mark.parametrize(("model", "path"), [("chat", "/v1/embeddings"), ("chat", "/v1/rerank"),
                                             ("embed", "/v1/chat/completions"), ("rerank", "/v1/embeddings"),
                                             ("embed", "/v2/rerank")])
def test_an_endpoint_the_model_does_not_serve_is_a_400_that_reaches_no_engine(
        cluster: Cluster, upstreams: dict[str, Upstream], model: str, path: str) -> None:
    before = {name: list(u.seen) for name, u in upstreams.items()}
    body = {"model": model, "input": "x", "query": "q", "documents": ["d"],
            "messages": [{"role": "user", "content": "x"}]}
    reply = post(cluster, path, body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "model_does_not_support_endpoint" and error["param"] == "model"
    assert {name: list(u.seen) for name, u in upstreams.items()} == before


def test_a_chat_model_asked_for_embeddings_again_and_again_stays_in_service(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0)
    for _ in range(8):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="chat", input="hello")
    served: set[str] = set()
    for _ in range(60):  # ties are broken at random: each replica is picked half the time
        served.add(post(cluster, "/v1/completions", {"model": "chat", "prompt": "hi", "max_tokens": 2})
                   .headers["x-modelyard-replica"])
        if len(served) == 2:
            break
    assert served == {"chat/0", "chat/1"}


@pytest.mark.parametrize("status", [400, 422, 500, 501])
def test_an_engines_answer_about_the_request_goes_back_unretried(cluster: Cluster, upstreams: dict[str, Upstream],
                                                               status: int) -> None:
    first, second = upstreams["chat0"], upstreams["chat1"]
    first.mode = f"error{status}"
    before = len(second.seen)
    replies: list[httpx.Response] = []
    from_first: list[httpx.Response] = []
    while len(from_first) < 3 and len(replies) < 60:  # ties are broken at random: chat/0 is picked half the time
        replies.append(post(cluster, "/v1/completions", {"model": "chat", "prompt": "hi", "max_tokens": 2}))
        from_first = [r for r in replies if r.headers.get("x-modelyard-replica") == "chat/0"]
    assert len(from_first) == 3 and all(r.status_code == status for r in from_first)  # passed back as it said
    assert all(r.json()["error"]["message"] == "boom" for r in from_first)
    assert len(second.seen) - before == len(replies) - len(from_first)  # none retried there
    assert cluster.metric("modelyard_replica_ejections_total", model="chat", replica="0") == 0


def test_embeddings_and_rerank_pass_through_with_their_usage(cluster: Cluster, upstreams: dict[str, Upstream]) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0)
    result = client.embeddings.create(model="embed", input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1] and result.usage.prompt_tokens == 6
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        reply = post(cluster, path, {"model": "rerank", "query": "q", "documents": ["a", "b"]})
        assert reply.status_code == 200 and [r["index"] for r in reply.json()["results"]] == [0, 1]
    assert upstreams["rerank"].seen[-3:] == ["/v1/rerank"] * 3  # every alias reaches the engine's one path
    tokens = cluster.metric("modelyard_tokens_total", model="rerank", key="env", kind="prompt")
    assert tokens == 21


def test_models_lists_every_model_with_its_task(cluster: Cluster) -> None:
    data = httpx.get(cluster.url + "/v1/models", headers=HEADERS).json()["data"]
    assert {m["id"]: m["task"] for m in data} == {"chat": "chat", "chat-only": "chat", "embed": "embedding",
                                                  "rerank": "rerank"}


def test_stream_options_that_are_not_an_object_are_a_400_and_hold_nothing(tmp_path: Path,
                                                                          upstreams: dict[str, Upstream]) -> None:
    model = {"name": "one", "engine": "openai", "urls": [upstreams["chat0"].url],
             "admission": {"max_concurrency": 1, "max_wait_s": 2}}
    running = Cluster(tmp_path, [model]).start()
    try:
        for options in ("yes", ["include_usage"], True):
            reply = post(running, "/v1/completions", {"model": "one", "prompt": "hi", "max_tokens": 2,
                                                      "stream": True, "stream_options": options})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "stream_options"
        reply = post(running, "/v1/completions", {"model": "one", "prompt": "hi", "max_tokens": 2})
        assert reply.status_code == 200  # the one admission slot was never taken
    finally:
        running.stop()


def test_a_replica_that_fails_its_probe_says_why_on_its_status_line_and_in_its_log(
        tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    model = {"name": "wrong", "engine": "openai", "urls": [upstreams["embed"].url]}  # chat, on an embedding server
    running = Cluster(tmp_path, [model]).start(ready_replicas=0)
    try:
        why = "probe: 1-token chat completion (/v1/chat/completions) answered 404"
        deadline = time.monotonic() + 30
        while why not in running.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"replica wrong/0: starting {upstreams['embed'].url} ({why}" in running.output()
        log = (tmp_path / "state" / "logs" / "wrong-0.log").read_text()
        assert log.count(why) == 1  # once, however often the probe fails the same way
    finally:
        running.stop()


def test_the_watchdog_takes_out_a_replica_that_answers_but_cannot_generate(tmp_path: Path) -> None:
    """An external server has no /health: only a real generation tells it cannot serve."""
    with Upstream() as broken, Upstream() as good:
        model = {"name": "w", "engine": "openai", "urls": [broken.url, good.url], "replicas": 2, "watchdog_s": 0.5}
        running = Cluster(tmp_path, [model]).start()
        try:
            broken.mode, broken.probes_ok = "error500", False
            deadline = time.monotonic() + 30
            while httpx.get(running.url + "/health").json()["models"]["w"]["ready"] != 1:
                assert time.monotonic() < deadline, "the watchdog never took the broken replica out"
                time.sleep(0.2)
            before = broken.requests
            replies = [post(running, "/v1/completions", {"model": "w", "prompt": "hi", "max_tokens": 2})
                       for _ in range(10)]
            assert [r.status_code for r in replies] == [200] * 10 and broken.requests == before
            assert "watchdog: " in running.output()
            broken.mode, broken.probes_ok = "ok", True  # it generates again: back in service
            while httpx.get(running.url + "/health").json()["models"]["w"]["ready"] != 2:
                assert time.monotonic() < deadline + 30
                time.sleep(0.2)
        finally:
            running.stop()


def test_metrics_are_for_the_metrics_key_only(cluster: Cluster) -> None:
    from tests.cluster import METRICS_KEY

    assert httpx.get(cluster.url + "/metrics").status_code == 401  # the keys' names and usage: not for everyone
    assert httpx.get(cluster.url + "/metrics", headers=HEADERS).status_code == 401  # an API key is not enough
    reply = httpx.get(cluster.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert reply.status_code == 200 and "modelyard_engine_requests_running" in reply.text
    assert 'modelyard_watchdog_probe_seconds{model="chat",replica="0"}' in reply.text


def test_metrics_can_be_public_or_off(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    model = {"name": "p", "engine": "openai", "urls": [upstreams["chat0"].url]}
    (tmp_path / "public").mkdir()
    public = Cluster(tmp_path / "public", [model], gateway={"metrics_public": True}).start()
    try:
        assert httpx.get(public.url + "/metrics").status_code == 200
    finally:
        public.stop()
    (tmp_path / "off").mkdir()
    off = Cluster(tmp_path / "off", [model], gateway={"metrics_key_env": None}).start()
    try:
        reply = httpx.get(off.url + "/metrics")
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "metrics_disabled"
    finally:
        off.stop()


@pytest.mark.parametrize(("field", "value"), [("stream", "yes"), ("max_tokens", 10**19), ("temperature", "hot")])
def test_a_wrong_field_is_the_clients_400_and_reaches_no_engine(cluster: Cluster, upstreams: dict[str, Upstream],
                                                                field: str, value: object) -> None:
    before = {name: list(u.seen) for name, u in upstreams.items()}
    reply = post(cluster, "/v1/completions", {"model": "chat", "prompt": "hi", field: value})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == field
    assert {name: list(u.seen) for name, u in upstreams.items()} == before
