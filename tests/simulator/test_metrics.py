from __future__ import annotations

from modelyard.simulator.metrics import TTFT_BUCKETS, EngineMetrics, Histogram


def test_histogram_renders_cumulative_buckets() -> None:
    h = Histogram("x_seconds", "help", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    out: list[str] = []
    h.render('model_name="m"', out)
    text = "".join(out)
    assert 'x_seconds_bucket{le="0.1",model_name="m"} 2.0' in text
    assert 'x_seconds_bucket{le="1.0",model_name="m"} 3.0' in text
    assert 'x_seconds_bucket{le="+Inf",model_name="m"} 4.0' in text
    assert 'x_seconds_count{model_name="m"} 4.0' in text
    assert h.count == 4


def test_engine_metrics_use_vllm_names_and_labels() -> None:
    metrics = EngineMetrics('my "model"')
    metrics.prefix_queries = 10
    text = metrics.render(running=2, waiting=3, kv_usage=0.25).decode()
    labels = 'engine="0",model_name="my \\"model\\""'
    assert f"vllm:num_requests_running{{{labels}}} 2.0" in text
    assert f"vllm:num_requests_waiting{{{labels}}} 3.0" in text
    assert f"vllm:kv_cache_usage_perc{{{labels}}} 0.25" in text
    assert f"vllm:prefix_cache_queries_total{{{labels}}} 10.0" in text
    for name in ("vllm:prefix_cache_hits_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"):
        assert name in text
    assert len(TTFT_BUCKETS) == 22


def test_cache_config_info_gives_the_kv_cache_size() -> None:
    assert "cache_config_info" not in EngineMetrics("m").render(running=0, waiting=0, kv_usage=0.0).decode()
    text = EngineMetrics("m", kv_blocks=480, block_size=16).render(running=0, waiting=0, kv_usage=0.0).decode()
    line = next(line for line in text.splitlines() if line.startswith("vllm:cache_config_info{"))
    assert 'num_gpu_blocks="480"' in line and 'block_size="16"' in line and line.endswith(" 1.0")
