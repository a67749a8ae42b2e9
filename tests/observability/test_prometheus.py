"""A real Prometheus (Debian's prometheus package, which `make install` adds) scrapes a running cluster: the
gateway's /metrics is what Prometheus reads, and a PromQL query returns its request counter."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from modelyard.fleet.process import free_port
from modelyard.observability.metrics import REQUESTS_TOTAL
from tests.cluster import API_KEY, METRICS_KEY, Cluster


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("prometheus is not installed (make install adds Debian's prometheus package)")
        pytest.skip("prometheus is not installed")
    return found


def test_prometheus_scrapes_the_gateway_and_answers_a_query(tmp_path: Path) -> None:
    binary = prometheus_binary()
    model = {"name": "sim", "engine": "simulator", "params": {"itl_base_s": 0.001}}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 2}).start(timeout_s=60)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "modelyard", "authorization": {"credentials": METRICS_KEY},
         "static_configs": [{"targets": [f"127.0.0.1:{cluster.port}"]}]}]}))
    prometheus = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(5):
            reply = httpx.post(cluster.url + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                               json={"model": "sim", "prompt": "hi", "max_tokens": 2}, timeout=30)
            assert reply.status_code == 200
        query = f'sum({REQUESTS_TOTAL}_total{{model="sim",status="200"}})'  # a counter: exposed with _total
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5).json()
                result = answer["data"]["result"]
                if result and float(result[0]["value"][1]) >= 5:
                    value = float(result[0]["value"][1])
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert value == 5.0
    finally:
        prometheus.terminate()
        prometheus.wait(15)
        cluster.stop()
