"""SGLang's command line from yard.yaml, pinned, and checked against the flags of the real `launch_server --help`
(recorded from SGLang 0.5.23 in tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from modelyard.engines import get_engine
from modelyard.engines.sglang import rerank_answer
from modelyard.spec.loader import parse_spec
from modelyard.spec.schema import SGLangModel
from tests.engine_clis import choices, options, unknown_flags
from tests.engines.test_vllm import SEED


def seed_model(tmp_path: Path) -> SGLangModel:
    weights = tmp_path / "qwen"
    weights.mkdir(exist_ok=True)
    (weights / "config.json").write_text(json.dumps({"rope_theta": 1000000.0}))
    model = parse_spec(SEED.replace("engine: vllm", "engine: sglang").replace("MODEL_DIR", str(weights))).models[0]
    assert isinstance(model, SGLangModel)
    return model


def test_the_seed_models_argv_and_environment(tmp_path: Path) -> None:
    plan = get_engine("sglang").launch(seed_model(tmp_path), "127.0.0.1", 8100, replica=0)
    assert plan.argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", str(tmp_path / "qwen"), "--host", "127.0.0.1",
        "--port", "8100", "--served-model-name", "qwen", "--tp-size", "2", "--pp-size", "1", "--enable-metrics",
        "--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3", "--context-length", "131072",
        "--random-seed", "1234", "--mem-fraction-static", "0.9", "--max-running-requests", "128",
        "--json-model-override-args", '{"rope_scaling":{"rope_type":"yarn","factor":4.0,'
                                      '"original_max_position_embeddings":32768,"rope_theta":1000000.0},'
                                      '"max_position_embeddings":131072}',
        "--disable-radix-cache", "--enable-lora", "--lora-paths", "sql=/adapters/sql", "--enable-memory-saver",
    ]
    assert plan.env == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}


def test_every_flag_we_emit_is_one_sglang_knows(tmp_path: Path) -> None:
    engine = get_engine("sglang")
    seed = seed_model(tmp_path)
    known = choices("sglang")
    for model in (seed, seed.model_copy(update={"task": "embedding"}), seed.model_copy(update={"task": "rerank"})):
        argv = engine.launch(model, "127.0.0.1", 8000, 0).argv
        assert unknown_flags("sglang", argv[3:]) == []
        opts = options(argv)
        assert opts["--quantization"] in known["--quantization"]
        assert opts["--kv-cache-dtype"] in known["--kv-cache-dtype"]  # not vLLM's plain fp8, which SGLang refuses


def test_pooling_tasks_run_as_an_embedding_server(tmp_path: Path) -> None:
    argv = get_engine("sglang").launch(seed_model(tmp_path).model_copy(update={"task": "rerank"}), "h", 1, 0).argv
    assert "--is-embedding" in argv


def test_sglangs_rerank_list_becomes_the_apis_shape() -> None:
    body = orjson.dumps([{"index": 1, "score": 0.9, "document": "b", "meta_info": {"prompt_tokens": 5}},
                         {"index": 0, "score": 0.1, "document": "a", "meta_info": {"prompt_tokens": 4}}])
    answer = orjson.loads(get_engine("sglang").answer_body("/v1/rerank", body))
    assert answer["results"] == [{"index": 1, "relevance_score": 0.9, "document": {"text": "b"}},
                                 {"index": 0, "relevance_score": 0.1, "document": {"text": "a"}}]
    assert answer["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert rerank_answer(b'{"error": "x"}') == b'{"error": "x"}'
    assert get_engine("sglang").answer_body("/v1/embeddings", body) == body
