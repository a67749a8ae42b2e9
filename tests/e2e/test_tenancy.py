"""Keys, limits, admission and usage through `modelyard up` (simulator replicas, real SQLite/PostgreSQL/Redis)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.store.factory import open_store
from tests.cluster import API_KEY, Cluster

ADMIN = "admin-" + "y" * 24


def sim(name: str = "chat", **params: Any) -> dict[str, Any]:
    return {"name": name, "engine": "simulator", "profile": "tiny-cpu",
            "params": {"itl_base_s": 0.002, "prefill_overhead_s": 0.001, **params}}


def admin(cluster: Cluster, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, cluster.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10,
                         **kwargs)


def new_key(cluster: Cluster, **limits: Any) -> str:
    reply = admin(cluster, "POST", "/admin/keys", json=limits)
    assert reply.status_code == 201, reply.text
    secret: str = reply.json()["secret"]
    return secret


def client(cluster: Cluster, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=key, timeout=30, max_retries=0)


def ask(cluster: Cluster, key: str, model: str = "chat", max_tokens: int = 4) -> Any:
    return client(cluster, key).completions.create(model=model, prompt="hello there", max_tokens=max_tokens)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path, [sim("chat"), sim("coder")], env={"MODELYARD_ADMIN_KEY": ADMIN}).start()
    yield running
    running.stop()


def test_admin_api_needs_the_admin_key(cluster: Cluster) -> None:
    assert httpx.get(cluster.url + "/admin/keys").status_code == 401
    wrong = httpx.get(cluster.url + "/admin/keys", headers={"Authorization": f"Bearer {API_KEY}"})
    assert wrong.status_code == 401
    assert admin(cluster, "GET", "/admin/keys").json()["data"] == []


def test_key_may_only_use_its_models_and_revocation_is_immediate(cluster: Cluster) -> None:
    key = new_key(cluster, name="team-a", models=["chat"])
    assert ask(cluster, key).choices
    with pytest.raises(openai.PermissionDeniedError) as info:
        ask(cluster, key, model="coder")
    assert info.value.code == "model_not_allowed"
    assert [m.id for m in client(cluster, key).models.list()] == ["chat"]
    assert admin(cluster, "DELETE", "/admin/keys/team-a").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        ask(cluster, key)


def test_rotation_replaces_the_secret(cluster: Cluster) -> None:
    old = new_key(cluster, name="rot")
    new = admin(cluster, "POST", "/admin/keys/rot/rotate").json()["secret"]
    assert ask(cluster, new).choices
    with pytest.raises(openai.AuthenticationError):
        ask(cluster, old)


def test_rpm_limit_gives_429_with_retry_after(cluster: Cluster) -> None:
    key = new_key(cluster, name="slow", rpm=3)
    for _ in range(3):
        ask(cluster, key)
    with pytest.raises(openai.RateLimitError) as info:
        ask(cluster, key)
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_budget_is_exhausted_then_refused(cluster: Cluster) -> None:
    key = new_key(cluster, name="small", budget_tokens=40)
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(20):
            ask(cluster, key, max_tokens=8)
    assert info.value.code == "budget_exceeded"


def test_injection_in_header_and_name_does_not_reach_sql(cluster: Cluster) -> None:
    for header in ("Bearer ' OR '1'='1", "Bearer x'); DROP TABLE keys;--", "' OR 1=1 --"):
        reply = httpx.get(cluster.url + "/v1/models", headers={"Authorization": header})
        assert reply.status_code == 401
    name = "x'); DROP TABLE keys;--"
    key = new_key(cluster, name=name)
    assert ask(cluster, key).choices
    names = [k["name"] for k in admin(cluster, "GET", "/admin/keys").json()["data"]]
    assert name in names


def test_a_full_admission_queue_answers_at_once(tmp_path: Path) -> None:
    model = {**sim("chat", itl_base_s=0.05), "admission": {"max_concurrency": 1, "max_queue": 0}}
    # one worker: with N, each admits its share of max_concurrency, rounded up (README, gateway.workers)
    running = Cluster(tmp_path, [model], gateway={"workers": 1}).start()
    try:
        long_started = threading.Event()

        def long_request() -> None:
            with httpx.stream("POST", running.url + "/v1/completions", timeout=30,
                              headers={"Authorization": f"Bearer {API_KEY}"},
                              json={"model": "chat", "prompt": "x", "max_tokens": 200, "stream": True}) as reply:
                for _ in reply.iter_raw():
                    long_started.set()

        worker = threading.Thread(target=long_request)
        worker.start()
        assert long_started.wait(20)
        with pytest.raises(openai.APIStatusError) as info:
            ask(running, API_KEY)
        assert info.value.status_code in (429, 503)
        assert info.value.response.headers.get("retry-after")
        worker.join(30)
        assert running.metric("modelyard_rejections_total", model="chat", key="env", reason="queue_full") == 1
    finally:
        running.stop()


def test_usage_buffered_at_sigterm_is_in_the_store_after_restart(tmp_path: Path) -> None:
    running = Cluster(tmp_path, [sim("chat")], extra={"store": {"usage_flush_interval_s": 60}}).start()
    try:
        for _ in range(5):
            ask(running, API_KEY)
        assert running.wait_metric("modelyard_usage_buffered_records", 5)  # not written yet
    finally:
        assert running.stop(signal.SIGTERM) == 0

    async def count() -> int:
        store = await open_store(None, tmp_path / "state")
        try:
            rows = await store.usage_report("key", since=0)
            return sum(r.requests for r in rows if r.group == "env")
        finally:
            await store.close()

    assert asyncio.run(count()) == 5


def test_two_gateways_on_one_redis_enforce_one_rpm(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    extra = {"store": {"url": pg_url, "redis": redis_url}}
    env = {"MODELYARD_ADMIN_KEY": ADMIN}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Cluster(tmp_path / "a", [sim("chat")], env=env, extra=extra)
    second = Cluster(tmp_path / "b", [sim("chat")], env=env, extra=extra)
    first.start()
    try:
        second.start()
        try:
            key = new_key(first, name="shared", rpm=6)
            served, refused = 0, 0
            for index in range(10):
                try:
                    ask(first if index % 2 else second, key)
                    served += 1
                except openai.RateLimitError:
                    refused += 1
            assert (served, refused) == (6, 4)
            admin(second, "DELETE", "/admin/keys/shared")
            with pytest.raises(openai.AuthenticationError):
                ask(first, key)
        finally:
            second.stop()
    finally:
        first.stop()


def test_text_is_stored_only_for_a_model_that_opts_in(tmp_path: Path) -> None:
    import sqlite3

    running = Cluster(tmp_path, [sim("private"), {**sim("audited"), "store_text": True}],
                      extra={"store": {"usage_flush_interval_s": 0.1}}).start()
    try:
        for model in ("private", "audited"):
            client(running, API_KEY).chat.completions.create(
                model=model, max_tokens=3, messages=[{"role": "user", "content": f"secret for {model}"}])
            list(client(running, API_KEY).completions.create(model=model, prompt=f"stream {model}", max_tokens=3,
                                                             stream=True))
    finally:
        running.stop()
    with sqlite3.connect(tmp_path / "state" / "modelyard.db") as db:
        rows = db.execute("SELECT model, prompt_text, completion_text FROM usage ORDER BY id").fetchall()
    by_model = {m: [(p, c) for model, p, c in rows if model == m] for m in ("private", "audited")}
    assert len(by_model["private"]) == 2 and all(p is None and c is None for p, c in by_model["private"])
    # in any order: with several gateway workers, each flushes its own usage buffer
    audited = sorted(by_model["audited"], key=lambda row: row[0] == "stream audited")
    assert len(audited) == 2
    (chat_prompt, chat_answer), (stream_prompt, stream_answer) = audited
    assert "secret for audited" in chat_prompt and chat_answer
    assert stream_prompt == "stream audited" and stream_answer


def test_a_lost_redis_fails_closed_with_a_clear_503(tmp_path: Path) -> None:
    from tests.servers import redis_server

    with redis_server() as url:
        running = Cluster(tmp_path, [sim("chat")], env={"MODELYARD_ADMIN_KEY": ADMIN},
                          extra={"store": {"redis": url}}).start()
        limited = new_key(running, name="limited", rpm=100)
    try:  # the Redis server is gone now
        with pytest.raises(openai.InternalServerError) as info:
            ask(running, limited)
        assert info.value.status_code == 503 and info.value.code == "limiter_unavailable"
        assert ask(running, API_KEY).choices  # a key without limits never asks Redis
    finally:
        running.stop()
