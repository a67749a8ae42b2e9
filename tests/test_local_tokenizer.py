"""modelyard/local_tokenizer.py with a real tokenizer trained in the test (tests/tokenizer_dir.py): the ids it gives
are the simulator's /tokenize ids and the keys of its KV events, for chat and completion prompts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import zmq

from modelyard.fleet.process import free_port
from modelyard.kv_hash import BlockHasher
from modelyard.local_tokenizer import LocalTokenizer, TokenizerError
from modelyard.routing.tokenize import EngineTokens
from modelyard.simulator.kv_events import BlockStored, KVEventBatch, KVEventsConfig
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from tests.tokenizer_dir import make_tokenizer_dir

SYSTEM = "You answer questions about the warehouse inventory, briefly and precisely. " * 6
CHAT = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where are the bolts?"}]}
COMPLETION = {"prompt": SYSTEM + "Q: where are the bolts? A:"}
DECODE = msgspec.msgpack.Decoder(KVEventBatch)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"))


def test_a_chat_is_rendered_with_its_template_and_encoded_without_added_tokens(directory: Path) -> None:
    tokenizer = LocalTokenizer(directory)
    text = tokenizer.render([{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                          {"type": "text", "text": "there"}]}])
    assert text == "<s><|im_start|>user\nhi\nthere<|im_end|>\n<|im_start|>assistant\n"
    bos, start = tokenizer.tokenizer.token_to_id("<s>"), tokenizer.tokenizer.token_to_id("<|im_start|>")
    ids = tokenizer.chat_ids({"messages": [{"role": "user", "content": "hi"}]})
    assert ids[:2] == [bos, start] and ids.count(bos) == 1  # the template's <s>, none added
    assert ids == tokenizer.encode(tokenizer.render([{"role": "user", "content": "hi"}]), add_special_tokens=False)
    bare = tokenizer.chat_ids({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": False})
    assert ids[:len(bare)] == bare and ids[len(bare)] == start  # then "<|im_start|>assistant\n"
    assert tokenizer.prompt_ids({"prompt": "hi"})[0] == bos  # a completion gets the post-processor's <s>
    assert tokenizer.prompt_ids({"prompt": "hi", "add_special_tokens": False})[0] != bos
    assert len(tokenizer.prompt_ids({"prompt": SYSTEM})) > 64  # the file's truncation is not applied


def test_continue_final_message_and_the_templates_own_errors(directory: Path) -> None:
    tokenizer = LocalTokenizer(directory)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The bolts are"}]
    assert tokenizer.render(messages, False, continue_final_message=True).endswith("assistant\nThe bolts are")
    with pytest.raises(TokenizerError, match="system goes first"):
        tokenizer.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    assert tokenizer.render(messages, chat_template="{{ messages | length }}") == "2"
    with pytest.raises(TokenizerError, match="not rendered"):  # a client's template could burn the CPU
        tokenizer.chat_ids({"messages": messages, "chat_template": "{% for i in range(99999) %}{% endfor %}"})
    marked = "{% for m in messages %}{% generation %}{{ m['content'] | tojson }}{% endgeneration %}{% endfor %}"
    assert tokenizer.render(messages, chat_template=marked) == '"hi""The bolts are"'  # transformers' extension


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: no such file"),
    (lambda d: (d / "tokenizer.json").write_text("{not json"), "tokenizer.json: not valid JSON (line 1"),
    (lambda d: (d / "tokenizer.json").write_text("[1]"), "tokenizer.json: not a JSON object"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json: not a tokenizer"),
    (lambda d: (d / "tokenizer_config.json").write_text("{"), "tokenizer_config.json: not valid JSON"),
    (lambda d: (d / "tokenizer_config.json").write_text('{"chat_template": 3}'),
     "tokenizer_config.json: chat_template is not a string"),
])
def test_a_broken_directory_is_an_error_naming_the_file(tmp_path: Path, setup: Any, message: str) -> None:
    directory = make_tokenizer_dir(tmp_path / "t")
    setup(directory)
    with pytest.raises(TokenizerError, match="t/" + message.replace("(", r"\(")):
        LocalTokenizer(directory)
    with pytest.raises(TokenizerError, match="no such directory"):
        LocalTokenizer(tmp_path / "absent")


def test_no_chat_template_is_an_error_for_chats_only(tmp_path: Path) -> None:
    directory = make_tokenizer_dir(tmp_path / "t")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = LocalTokenizer(directory)
    assert tokenizer.prompt_ids({"prompt": "hi"})
    with pytest.raises(TokenizerError, match="no chat template"):
        tokenizer.chat_ids(CHAT)
    (directory / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # transformers' file wins
    assert LocalTokenizer(directory).render(CHAT["messages"]) == SYSTEM


def stored_keys(sub: zmq.Socket[bytes], block_size: int) -> list[int]:
    """The block hashes of the BlockStored events that come within a short wait, in order."""
    keys: list[int] = []
    while sub.poll(300):
        _topic, _seq, payload = sub.recv_multipart()
        for event in DECODE.decode(payload).events:
            if isinstance(event, BlockStored):
                assert event.block_size == block_size
                keys += event.block_hashes
    return keys


def test_local_ids_are_the_simulators_tokenize_ids_and_its_event_keys(directory: Path) -> None:
    tokenizer = LocalTokenizer(directory)
    profile = resolve_profile("tiny-cpu", {"prefill_s_per_token": 0, "itl_base_s": 0.001, "hash_seed": "42"})
    config = KVEventsConfig(f"tcp://127.0.0.1:{free_port()}", None, topic="kv")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    local, engine = EngineTokens(), EngineTokens()
    try:
        with SimulatorThread(profile, "sim", kv_events=config, tokenizer=LocalTokenizer(directory)) as sim:
            sub.connect(config.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, b"kv")
            for n in range(50):  # a SUB socket gets what is sent after it joined
                httpx.post(sim.url + "/v1/completions", json={"prompt": f"join {n} " * 20, "max_tokens": 1})
                if sub.poll(100):
                    break
            stored_keys(sub, profile.block_size)
            for payload, path in ((CHAT, "/v1/chat/completions"), (COMPLETION, "/v1/completions")):
                ids = tokenizer.ids({"model": "sim", **payload})
                answer = httpx.post(sim.url + "/tokenize", json={"model": "sim", **payload}).json()
                assert answer["tokens"] == ids and answer["count"] == len(ids) > 40
                keys = asyncio.run(local.prompt(payload, "sim", "", "", profile.block_size, "42", tokenizer))
                assert keys == (BlockHasher("42").keys(ids, profile.block_size), len(ids))
                assert asyncio.run(engine.keys(payload, "sim", sim.url, "/tokenize", profile.block_size, "42")) \
                    == keys[0]
                reply = httpx.post(sim.url + path, json={**payload, "max_tokens": 1})
                assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == len(ids)
                assert stored_keys(sub, profile.block_size) == list(keys[0])  # what its events say it holds
        assert local.round_trips == 0 and engine.round_trips == 2
    finally:
        sub.close(linger=0)
        ctx.term()


def test_a_long_prompt_gets_the_same_ids_from_a_worker_thread(directory: Path) -> None:
    tokenizer = LocalTokenizer(directory)
    long = {"prompt": SYSTEM * 40}  # past routing/tokenize.py's INLINE_BYTES
    keys, count = asyncio.run(EngineTokens().prompt(long, "m", "", "", 16, "0", tokenizer))
    ids = tokenizer.prompt_ids(long)
    assert count == len(ids) and keys == BlockHasher("0").keys(ids, 16)
