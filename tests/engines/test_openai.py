from __future__ import annotations

import pydantic
import pytest

from modelyard.engines.openai import OpenAIEngine
from modelyard.spec.schema import OpenAIModel

URLS = ("http://10.0.0.1:8000", "http://10.0.0.2:8000")


def test_external_servers_declare_their_kv_events_one_per_url() -> None:
    engine = OpenAIEngine()
    plain = OpenAIModel(name="m", engine="openai", urls=URLS, replicas=2)
    assert engine.kv_events(plain, "127.0.0.1", 0) is None and engine.tokenizer(plain) is None
    assert not engine.publishes_kv_events(plain)
    model = OpenAIModel(name="m", engine="openai", urls=URLS, replicas=2, kv_hash_seed="9",
                        kv_events=("tcp://10.0.0.1:5557", "tcp://10.0.0.2:5557"),
                        kv_replay=("tcp://10.0.0.1:5558", "tcp://10.0.0.2:5558"))
    events = engine.kv_events(model, "127.0.0.1", 1)
    assert events is not None and (events.endpoint, events.replay, events.hash_seed) == (
        "tcp://10.0.0.2:5557", "tcp://10.0.0.2:5558", "9")
    assert engine.publishes_kv_events(model) and engine.tokenizer(model) == "/tokenize"


def test_one_address_per_url() -> None:
    with pytest.raises(pydantic.ValidationError, match="one address per url"):
        OpenAIModel(name="m", engine="openai", urls=URLS, replicas=2, kv_events=("tcp://10.0.0.1:5557",))
