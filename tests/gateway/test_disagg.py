"""The prefill leg's body and the handoff read from its answer (gateway/disagg.py); the legs themselves run end to
end in tests/e2e/test_disaggregation.py."""

from __future__ import annotations

import orjson

from modelyard.gateway.disagg import REMOTE_DECODE, handed_off, prefill_payload


def test_the_prefill_leg_asks_for_one_token_unstreamed_and_a_remote_decode() -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 200,
               "max_completion_tokens": 200, "stream_options": {"include_usage": True}, "min_tokens": 5,
               "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "10.0.0.1"}, "temperature": 0.3}
    leg = prefill_payload(payload)
    assert leg == {"model": "m", "messages": payload["messages"], "stream": False, "max_tokens": 1,
                   "max_completion_tokens": 1, "temperature": 0.3, "kv_transfer_params": REMOTE_DECODE}
    assert REMOTE_DECODE == {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                             "remote_block_ids": None, "remote_host": None, "remote_port": None}
    assert "max_completion_tokens" not in prefill_payload({"prompt": "x"})
    assert payload["stream"] is True  # the client's request is left as it was


def test_the_handoff_is_the_answers_kv_transfer_params() -> None:
    params = {"do_remote_prefill": True, "remote_block_ids": [1, 2], "remote_engine_id": "e"}
    assert handed_off(orjson.dumps({"choices": [], "kv_transfer_params": params})) == params
    for answer in (b'{"choices": []}', b'{"kv_transfer_params": null}', b'{"kv_transfer_params": {}}', b"not json",
                   b"[1]"):
        assert handed_off(answer) is None
