from __future__ import annotations

import contextlib
import subprocess
import sys

import httpx
import openai
import pytest

from modelyard.fleet.process import free_port
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.simulator.server import CRASH_EXIT_CODE
from tests.simulator.conftest import FAST, StartSimulator, client_for
from tests.simulator.helpers import eventually, metric


@pytest.mark.parametrize(("kind", "error"), [
    ("500", openai.InternalServerError), ("503", openai.InternalServerError), ("429", openai.RateLimitError),
    ("drop", openai.APIConnectionError),
])
def test_failure_kinds(start_simulator: StartSimulator, kind: str, error: type[Exception]) -> None:
    sim = start_simulator(failure_rate=1.0, failure_kinds=kind)
    with pytest.raises(error):
        client_for(sim).completions.create(model="sim", prompt="x", max_tokens=1)
    assert httpx.get(sim.url + "/health").status_code == 200


def test_hang_accepts_and_never_answers(start_simulator: StartSimulator) -> None:
    sim = start_simulator(failure_rate=1.0, failure_kinds="hang")
    with pytest.raises(openai.APITimeoutError):
        client_for(sim, timeout=0.3).completions.create(model="sim", prompt="x", max_tokens=1)


def test_failure_rate_is_a_share(start_simulator: StartSimulator) -> None:
    sim = start_simulator(failure_rate=0.5, failure_kinds="500", seed=3)
    with httpx.Client(base_url=sim.url) as client:
        statuses = [client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code
                    for _ in range(40)]
    assert set(statuses) == {200, 500}


def test_crash_calls_the_exit() -> None:
    crashed = []
    profile = resolve_profile("tiny-cpu", {**FAST, "failure_rate": 1.0, "failure_kinds": "crash"})
    with SimulatorThread(profile, "sim", crash=lambda: crashed.append(True)) as sim:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert crashed == [True]


def test_crash_exits_the_process() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "modelyard.simulator", "--port", str(port), "--model", "sim",
            "--param", "failure_rate=1", "--param", "failure_kinds=crash"]
    with subprocess.Popen(argv, stderr=subprocess.DEVNULL) as proc:
        try:
            def up() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
                return False

            eventually(up)
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x", "max_tokens": 1})
            assert proc.wait(timeout=10) == CRASH_EXIT_CODE
        finally:
            if proc.poll() is None:
                proc.kill()


def test_requests_over_max_num_seqs_wait(start_simulator: StartSimulator) -> None:
    sim = start_simulator(max_num_seqs=2, itl_base_s=0.05)
    body = {"model": "sim", "prompt": "long answer", "max_tokens": 2000, "stream": True}
    with httpx.Client(base_url=sim.url) as client, contextlib.ExitStack() as streams:
        for _ in range(4):
            streams.enter_context(client.stream("POST", "/v1/completions", json=body))
        eventually(lambda: metric(sim.url, "vllm:num_requests_waiting") == 2)
        assert metric(sim.url, "vllm:num_requests_running") == 2
        assert metric(sim.url, "vllm:kv_cache_usage_perc") > 0
    # closing the streams aborts their requests and frees their blocks
    eventually(lambda: metric(sim.url, "vllm:num_requests_running") == 0)
    assert metric(sim.url, "vllm:num_requests_waiting") == 0
    assert metric(sim.url, "vllm:kv_cache_usage_perc") == 0
