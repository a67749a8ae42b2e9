from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from modelyard.engines.llamacpp import METRICS as LLAMACPP_NAMES
from modelyard.engines.vllm import METRICS as VLLM_NAMES
from modelyard.fleet.process import free_port
from modelyard.routing.endpoints import EndpointTable, ReplicaState
from modelyard.routing.scrape import MetricsScraper, parse
from modelyard.simulator.metrics import EngineMetrics
from tests.replicas import replicas

VLLM_V0 = b"""# HELP vllm:num_requests_running Number of requests currently running on GPU.
vllm:num_requests_running{model_name="a"} 2.0
vllm:num_requests_waiting{model_name="a"} 1.0
vllm:num_requests_waiting_by_reason{model_name="a"} 9.0
vllm:gpu_cache_usage_perc{model_name="a"} 0.25
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="1200"} 1.0
"""

LLAMACPP = b"""# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
llamacpp:kv_cache_usage_ratio 0.5"""


def test_parses_the_simulators_vllm_names() -> None:
    text = EngineMetrics("m", kv_blocks=2048, block_size=16).render(running=5, waiting=3, kv_usage=0.4)
    sample = parse(text, VLLM_NAMES)
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_usage) == (5, 3, 0.4)
    assert (sample.kv_blocks, sample.block_size) == (2048, 16)
    sample = parse(EngineMetrics("m").render(running=0, waiting=0, kv_usage=0.0), VLLM_NAMES)
    assert sample is not None and sample.kv_blocks is None


def test_parses_older_vllm_names_with_the_cache_size() -> None:
    sample = parse(VLLM_V0, VLLM_NAMES)
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_usage) == (2, 1, 0.25)
    assert (sample.kv_blocks, sample.block_size) == (1200, 16)


def test_parses_llama_server_names() -> None:
    sample = parse(LLAMACPP, LLAMACPP_NAMES)
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_usage) == (3, 2, 0.5)


def test_no_known_names_or_garbage() -> None:
    assert parse(b"# nothing here\nprocess_cpu_seconds_total 3.0\n", VLLM_NAMES) is None
    assert parse(LLAMACPP, VLLM_NAMES) is None  # only the names of the replica's own engine count
    assert parse(b"vllm:num_requests_running{a=\"b\"} lots\n", VLLM_NAMES) is None
    assert parse(b"", VLLM_NAMES) is None


def test_scraper_fills_ready_endpoints_and_survives_a_dead_one() -> None:
    async def scenario() -> None:
        app = web.Application()
        asked: list[str] = []

        async def metrics(request: web.Request) -> web.Response:
            asked.append(request.host)
            return web.Response(body=VLLM_V0)

        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        table = EndpointTable()
        live, dead, starting = replicas(3, in_flight=[4, 0, 0])
        live.url, dead.url, starting.url = (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}",
                                            f"http://127.0.0.1:{port}")
        starting.state = ReplicaState.STARTING
        (external,) = replicas(1, model="external")  # its engine declares no metric names: never asked
        external.url = f"http://localhost:{port}"
        for endpoint in (live, dead, starting, external):
            table.add(endpoint)
        scraper = MetricsScraper(table, {live.model: VLLM_NAMES}, interval_s=0.05)
        async with aiohttp.ClientSession() as session:
            scraper.start(session)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if live.scraped_at:
                    break
            await scraper.stop()
        await runner.cleanup()
        assert (live.running, live.waiting, live.kv_usage, live.kv_tokens) == (2, 1, 0.25, 1200 * 16)
        assert live.in_flight_at_scrape == 4
        assert dead.scraped_at == 0.0 and starting.scraped_at == 0.0
        assert external.scraped_at == 0.0 and asked and not any(host.startswith("localhost") for host in asked)

    asyncio.run(scenario())
