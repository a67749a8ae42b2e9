from __future__ import annotations

import urllib.request

import msgspec
import orjson
import zmq

from modelyard.fleet.process import free_port
from modelyard.simulator.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, KVEventsConfig
from modelyard.simulator.kvcache import PrefixCache, block_hashes
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.simulator.tokens import tokenize

DECODE = msgspec.msgpack.Decoder(KVEventBatch)


def test_the_cache_records_stored_runs_evictions_and_clears() -> None:
    cache = PrefixCache(3, block_size=2, record=True)
    tokens = [1, 2, 3, 4, 5, 6]
    chain = block_hashes(tokens, 2)
    assert cache.allocate(chain[:1], 0, tokens)
    assert cache.allocate(chain, 0, tokens)
    assert cache.take_events() == [("stored", chain[:1], None, [1, 2]), ("stored", chain[1:], chain[0], [3, 4, 5, 6])]
    cache.release(chain, 0)
    cache.release(chain[:1], 0)
    other = block_hashes([9, 9, 8, 8], 2)
    assert cache.allocate(other, 0, [9, 9, 8, 8])
    events = cache.take_events()
    assert events[0] == ("removed", [chain[2], chain[1]])  # the tail went first, in one event
    cache.release(other, 0)
    cache.reset()
    assert cache.take_events() == [("cleared",)]


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        raw = resp.read()
        answer: dict[str, object] = orjson.loads(raw) if raw else {}
        return answer


def tokens_key(prompt: str) -> str:
    return prompt


def receive(sub: zmq.Socket[bytes]) -> tuple[int, KVEventBatch]:
    assert sub.poll(5000), "no KV event batch"
    topic, seq, payload = sub.recv_multipart()
    assert topic == b"kv"
    return int.from_bytes(seq, "big"), DECODE.decode(payload)


def test_the_simulator_publishes_vllms_events_and_replays_them() -> None:
    pub, replay = free_port(), free_port()
    config = KVEventsConfig(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}", topic="kv")
    profile = resolve_profile("tiny-cpu", {"prefill_s_per_token": 0, "itl_base_s": 0.001, "block_size": 4})
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    req = ctx.socket(zmq.DEALER)  # REQ would take only the first of the answers
    try:
        with SimulatorThread(profile, "sim", kv_events=config) as sim:
            sub.connect(config.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, b"kv")
            sent = {}
            for n in range(50):  # a SUB socket gets what is sent after it joined: new prompts until a batch comes
                prompt = f"{n} one two three four five six seven eight nine"
                tokens = sent[tokens_key(prompt)] = tokenize(prompt)
                post(sim.url + "/v1/completions", {"prompt": prompt, "max_tokens": 1})
                if sub.poll(100):
                    break
            seq, batch = receive(sub)
            stored = batch.events[0]
            assert isinstance(stored, BlockStored)
            tokens = next(t for t in sent.values() if block_hashes(t, 4) == stored.block_hashes)  # vLLM's keys
            assert stored.parent_block_hash is None and stored.token_ids == tokens[:8] and stored.block_size == 4
            assert stored.medium == "GPU" and stored.lora_id is None
            post(sim.url + "/reset_prefix_cache", {})
            seq2, batch2 = receive(sub)
            assert seq2 == seq + 1 and isinstance(batch2.events[-1], AllBlocksCleared)

            req.connect(config.replay_endpoint or "")
            req.send_multipart((b"", seq.to_bytes(8, "big")))  # the envelope a REQ socket adds
            replayed = []
            while True:
                assert req.poll(5000)
                _empty, seq_bytes, payload = req.recv_multipart()
                if not payload:
                    assert int.from_bytes(seq_bytes, "big", signed=True) == -1
                    break
                replayed.append((int.from_bytes(seq_bytes, "big"), DECODE.decode(payload)))
            assert [s for s, _ in replayed] == [seq, seq2]
            assert replayed[0][1].events == batch.events
    finally:
        sub.close(linger=0)
        req.close(linger=0)
        ctx.term()


def test_removed_event_shape() -> None:
    encoded = msgspec.msgpack.encode(KVEventBatch(ts=1.0, events=[BlockRemoved(block_hashes=[5], medium="GPU")]))
    raw = msgspec.msgpack.decode(encoded)
    assert raw["events"][0] == {"type": "BlockRemoved", "block_hashes": [5], "medium": "GPU"}


def test_the_replay_address_defaults_to_the_next_port() -> None:
    from modelyard.simulator.kv_events import default_replay

    assert default_replay("tcp://127.0.0.1:5557") == "tcp://127.0.0.1:5558"
    assert default_replay("ipc:///tmp/kv.pub") is None


def test_simulate_takes_kv_events_on_its_command_line() -> None:
    from click.testing import CliRunner

    from modelyard.simulator import cli

    seen: dict[str, object] = {}
    import modelyard.simulator.run as run

    serve = run.serve
    def fake(profile: object, name: str, host: str, port: int, level: str, events: object, role: object,
             tokenizer: object = None) -> None:
        seen.update(events=events, role=role)

    run.serve = fake  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(cli.simulate, ["--kv-events", "tcp://127.0.0.1:6000", "--kv-events-topic", "t"])
    finally:
        run.serve = serve
    assert result.exit_code == 0, result.output
    assert seen["events"] == KVEventsConfig("tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", topic="t")
    assert seen["role"] is None
    run.serve = fake  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(cli.simulate, ["--role", "decode"])
    finally:
        run.serve = serve
    assert result.exit_code == 0 and seen["role"] == "decode", result.output
    assert CliRunner().invoke(cli.simulate, ["--role", "both"]).exit_code == 2
