"""The simulator's two roles of prefill/decode disaggregation (simulator/disagg.py), and the interference between
prefills and decodes on one replica that disaggregation removes (simulator/scheduler.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelyard.simulator.latency import decode_step_s, step_s
from modelyard.simulator.metrics import EngineMetrics
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.simulator.scheduler import Scheduler, Sequence
from tests.simulator.conftest import FAST
from tests.simulator.helpers import metric

ASK = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None, "remote_block_ids": None,
       "remote_host": None, "remote_port": None}
PROMPT = "the quick brown fox jumps over the lazy dog " * 20  # 180 words: 11 full blocks of 16


@pytest.fixture
def pair() -> Iterator[tuple[SimulatorThread, SimulatorThread]]:
    profile = resolve_profile("tiny-cpu", {**FAST, "prefill_s_per_token": 0.00001})
    with SimulatorThread(profile, "sim", role="prefill") as prefill, \
            SimulatorThread(profile, "sim", role="decode") as decode:
        yield prefill, decode


def complete(url: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": "sim", "prompt": PROMPT, **body}, timeout=10)


def test_a_prefill_replica_hands_off_and_a_decode_replica_skips_the_prefill(
        pair: tuple[SimulatorThread, SimulatorThread]) -> None:
    prefill, decode = pair
    first = complete(prefill.url, max_tokens=1, stream=False, kv_transfer_params=ASK)
    assert first.status_code == 200, first.text
    params = first.json()["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert len(params["remote_block_ids"]) == 11 and isinstance(params["remote_engine_id"], str)
    assert (params["remote_host"], params["remote_port"]) == ("127.0.0.1", prefill.port)
    prompt_tokens = first.json()["usage"]["prompt_tokens"]
    assert metric(prefill.url, "modelyard_simulator:computed_prompt_tokens_total") == prompt_tokens
    assert metric(prefill.url, "modelyard_simulator:kv_transfers_sent_total") == 1

    answer = complete(decode.url, max_tokens=5, kv_transfer_params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"] == {**answer.json()["usage"], "prompt_tokens": prompt_tokens,
                                      "completion_tokens": 5}
    assert metric(decode.url, "modelyard_simulator:computed_prompt_tokens_total") == 0  # no prefill of its own
    assert metric(decode.url, "modelyard_simulator:kv_transfers_received_total") == 1
    assert metric(decode.url, "modelyard_simulator:kv_blocks_received_total") == 11
    streamed = complete(decode.url, max_tokens=3, stream=True, kv_transfer_params=params)
    assert streamed.status_code == 200 and streamed.text.count("data: {") == 3
    assert metric(decode.url, "modelyard_simulator:kv_transfers_received_total") == 2


def test_without_the_params_each_role_serves_a_whole_request(pair: tuple[SimulatorThread, SimulatorThread]) -> None:
    prefill, decode = pair
    for sim in (prefill, decode):
        answer = complete(sim.url, max_tokens=2)
        assert answer.status_code == 200 and answer.json()["kv_transfer_params"] is None
        assert metric(sim.url, "modelyard_simulator:computed_prompt_tokens_total") > 0
    # a decode replica asked to hand off does the whole request itself
    assert complete(decode.url, max_tokens=1, kv_transfer_params=ASK).json()["kv_transfer_params"] is None
    assert metric(decode.url, "modelyard_simulator:kv_transfers_sent_total") == 0


def test_bad_params_are_the_client_s_mistake(pair: tuple[SimulatorThread, SimulatorThread]) -> None:
    prefill, decode = pair
    assert complete(decode.url, kv_transfer_params="yes").status_code == 400
    bad = {"do_remote_prefill": True, "remote_block_ids": "1,2", "remote_engine_id": "x"}
    answer = complete(decode.url, kv_transfer_params=bad)
    assert answer.status_code == 400 and "remote_block_ids" in answer.json()["error"]["message"]


def test_a_mixed_replica_ignores_the_params() -> None:
    with SimulatorThread(resolve_profile("tiny-cpu", FAST), "sim") as sim:
        answer = complete(sim.url, max_tokens=1, kv_transfer_params=ASK)
        assert answer.status_code == 200 and "kv_transfer_params" not in answer.json()


def test_a_long_prefill_stalls_the_decodes_of_its_replica_and_a_received_one_does_not() -> None:
    """The modelled step durations (no clock): while a mixed replica prefills an 8k-token prompt, the step that
    gives its running stream its next token lasts the whole prefill; on a decode replica the same prompt, with its
    KV cache received, costs a decode step."""
    profile = resolve_profile("llama-3.1-8b-h100", {"jitter": 0.0, "max_model_len": 16384})
    for remote, expected in ((False, step_s(profile, 1, (8000,))), (True, decode_step_s(profile, 2))):
        scheduler = Scheduler(profile, EngineMetrics("m", profile.kv_blocks))
        streaming = Sequence(prompt_tokens=list(range(100)), max_tokens=256, stop_reason="length", arrival=0.0)
        scheduler.submit(streaming)
        scheduler._emit(scheduler.plan_step(0.0))  # its prefill, and its first token
        assert scheduler.plan_step(1.0) == decode_step_s(profile, 1)  # decoding alone
        scheduler._emit(2.0)
        long = Sequence(prompt_tokens=list(range(10_000, 18_000)), max_tokens=256, stop_reason="length",
                        arrival=2.0, remote_prefill=remote)
        scheduler.submit(long)
        assert scheduler.plan_step(2.0) == pytest.approx(expected)
        assert scheduler.metrics.computed_prompt_tokens == 100 + (0 if remote else 8000)
    assert step_s(profile, 1, (8000,)) > 20 * decode_step_s(profile, 2)  # the stall: 271 ms against 6.6 ms
