"""Prefill/decode disaggregation through `modelyard up` (gateway/disagg.py): simulator replicas in the two roles,
a request's prefill on a prefill replica and its decode on a decode replica, streamed or not, told from the
replicas' own counters; a prefill replica that hangs (the leg retried on the other), both hung (the decode replica
prefills itself), and a prefill replica's answer about the request (back to the client, no decode)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.cluster import API_KEY, METRICS_KEY, Cluster
from tests.simulator.helpers import metric

PREFILL, DECODE = ("split/0", "split/1"), ("split/2", "split/3")
SENT, RECEIVED = "modelyard_simulator:kv_transfers_sent_total", "modelyard_simulator:kv_transfers_received_total"
COMPUTED = "modelyard_simulator:computed_prompt_tokens_total"
COUNTERS = (SENT, RECEIVED, COMPUTED)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    model = {"name": "split", "engine": "simulator", "profile": "tiny-cpu", "roles": {"prefill": 2, "decode": 2},
             "routing": "round-robin",  # the prefill leg alternates: a test knows both replicas get tried
             "watchdog_s": None, "timeouts": {"first_byte_s": 2.0},
             "params": {"itl_base_s": 0.002, "prefill_overhead_s": 0.001, "prefill_s_per_token": 0.00001,
                        "max_model_len": 2048}}
    running = Cluster(tmp_path_factory.mktemp("disagg"), [model], gateway={"workers": 1})
    running.start()
    yield running
    running.stop()


def replica_urls(cluster: Cluster) -> dict[str, str]:
    return {f"split/{n}": cluster.replica_url("split", n) for n in range(4)}


def counters(urls: dict[str, str]) -> dict[tuple[str, str], float]:
    return {(replica, name): metric(url, name) for replica, url in urls.items() for name in COUNTERS}


def delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def post(cluster: Cluster, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(cluster.url + path, json={"model": "split", **body}, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"})


def prompt(n: int) -> str:
    return f"Request {n}: " + "tell me about the weather in the mountains today " * 12  # 8 full blocks and more


def test_a_request_is_prefilled_on_a_prefill_replica_and_decoded_on_a_decode_replica(cluster: Cluster) -> None:
    urls = replica_urls(cluster)
    before = counters(urls)
    reply = post(cluster, "/v1/completions", {"prompt": prompt(1), "max_tokens": 7,
                                              "kv_transfer_params": {"do_remote_prefill": True}})  # never passed on
    assert reply.status_code == 200, reply.text
    decoder = reply.headers["x-modelyard-replica"]
    usage = reply.json()["usage"]
    assert decoder in DECODE and usage["completion_tokens"] == 7  # usage: the decode answer's
    changed = delta(before, counters(urls))
    prefiller = next(r for r in PREFILL if changed.get((r, SENT)))
    assert changed == {(prefiller, SENT): 1, (prefiller, COMPUTED): usage["prompt_tokens"], (decoder, RECEIVED): 1}
    assert cluster.metric("modelyard_prefill_legs_total", model="split", outcome="handed_off") == 1


def test_a_streamed_chat_request_too(cluster: Cluster) -> None:
    urls = replica_urls(cluster)
    before = counters(urls)
    with httpx.stream("POST", cluster.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "split", "stream": True, "max_tokens": 5,
                            "messages": [{"role": "user", "content": prompt(2)}]}) as reply:
        assert reply.status_code == 200
        decoder = reply.headers["x-modelyard-replica"]
        text = "".join(reply.iter_text())
    assert decoder in DECODE and text.count('"content":"') >= 5 and text.rstrip().endswith("data: [DONE]")
    assert '"usage"' not in text  # asked by the gateway, not passed on
    changed = delta(before, counters(urls))
    assert [k for k in changed if k[1] == SENT and k[0] in PREFILL] and changed[(decoder, RECEIVED)] == 1
    assert not any(changed.get((r, COMPUTED)) for r in DECODE)  # the decode replica skipped the prefill


def test_a_prefill_replicas_answer_about_the_request_goes_back_without_a_decode(cluster: Cluster) -> None:
    urls = replica_urls(cluster)
    before = counters(urls)
    reply = post(cluster, "/v1/completions", {"prompt": "word " * 3000, "max_tokens": 5})  # beyond max_model_len
    assert reply.status_code == 400 and "maximum context length" in reply.json()["error"]["message"]
    assert reply.headers["x-modelyard-replica"] in PREFILL
    assert delta(before, counters(urls)) == {}
    assert cluster.metric("modelyard_prefill_legs_total", model="split", outcome="refused") == 1


@contextlib.contextmanager
def stopped(cluster: Cluster, urls: dict[str, str], replicas: tuple[str, ...]) -> Iterator[None]:
    """The replicas' processes frozen (SIGSTOP: they accept connections and never answer), then thawed."""
    ports = {urls[r].rsplit(":", 1)[1] for r in replicas}
    frozen = [p for p in cluster.engine_processes()
              if any(f"--port {port} " in " ".join(p.cmdline()) + " " for port in ports)]
    assert len(frozen) == len(replicas)
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


def wait_all_ready(cluster: Cluster) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(cluster.url + "/health", timeout=5).json()["models"]["split"]["ready"] < 4:
        assert time.monotonic() < deadline, "the replicas did not come back"
        time.sleep(0.25)


def test_a_hung_prefill_replica_the_leg_is_retried_on_the_other(cluster: Cluster) -> None:
    urls = replica_urls(cluster)
    before = counters(urls)
    retries = cluster.metric("modelyard_upstream_retries_total", model="split")
    with stopped(cluster, urls, (PREFILL[0],)):
        replies = [post(cluster, "/v1/completions", {"prompt": prompt(10 + n), "max_tokens": 3}) for n in range(2)]
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    changed = delta(before, counters(urls))
    assert changed[(PREFILL[1], SENT)] == 2  # both prefilled by the other (the frozen one, thawed, may finish its own)
    assert sum(changed.get((r, RECEIVED), 0) for r in DECODE) == 2
    assert not any(changed.get((r, COMPUTED)) for r in DECODE)
    assert cluster.metric("modelyard_upstream_retries_total", model="split") > retries
    wait_all_ready(cluster)


def test_no_prefill_replica_answers_the_decode_replica_prefills_itself(cluster: Cluster) -> None:
    wait_all_ready(cluster)
    urls = replica_urls(cluster)
    before = counters(urls)
    with stopped(cluster, urls, PREFILL):
        reply = post(cluster, "/v1/completions", {"prompt": prompt(20), "max_tokens": 3})
    assert reply.status_code == 200, reply.text
    decoder = reply.headers["x-modelyard-replica"]
    changed = delta(before, counters(urls))
    on_decoders = {key: value for key, value in changed.items() if key[0] in DECODE}  # the thawed ones finish theirs
    assert decoder in DECODE and on_decoders == {(decoder, COMPUTED): reply.json()["usage"]["prompt_tokens"]}
    assert cluster.metric("modelyard_prefill_legs_total", model="split", outcome="no_prefill_replica") == 1
    wait_all_ready(cluster)


def test_dry_run_shows_each_replicas_role(cluster: Cluster) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "modelyard", "up", "--dry-run", "-f", str(cluster.spec_path)],
                         capture_output=True, text=True, timeout=60, env=cluster.env).stdout
    for replica, role in (("split/0", "prefill"), ("split/1", "prefill"), ("split/2", "decode"), ("split/3", "decode")):
        assert f"{replica}  engine simulator, task chat, role {role}" in out, out
    assert out.count("--role prefill") == 2 and out.count("--role decode") == 2


def statuses(cluster: Cluster, status: str) -> float:
    """Requests of model split answered (or recorded) with `status`, whatever the key."""
    text = httpx.get(cluster.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modelyard_requests_total{") and 'model="split"' in line
               and f'status="{status}"' in line)


def test_a_client_that_leaves_during_the_prefill_leg_gives_back_what_it_held(cluster: Cluster) -> None:
    wait_all_ready(cluster)
    urls = replica_urls(cluster)
    gone = statuses(cluster, "499")
    with stopped(cluster, urls, (PREFILL[0],)):
        outcomes = []
        for n in range(2):  # round-robin: one of the two prefill legs goes to the frozen replica
            try:
                outcomes.append(httpx.post(cluster.url + "/v1/completions", timeout=1.0,
                                           headers={"Authorization": f"Bearer {API_KEY}"},
                                           json={"model": "split", "prompt": prompt(30 + n), "max_tokens": 2}
                                           ).status_code)
            except httpx.TimeoutException:
                outcomes.append(0)  # the client left before the answer
        assert sorted(outcomes) == [0, 200]
        deadline = time.monotonic() + 10  # the gateway sees the client leave and records it (499)
        while statuses(cluster, "499") < gone + 1:
            assert time.monotonic() < deadline, "the abandoned request was not recorded"
            time.sleep(0.05)
        assert cluster.wait_metric("modelyard_requests_in_flight", 0.0, model="split")  # the replica given back
    wait_all_ready(cluster)
