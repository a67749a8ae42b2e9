"""Runs `modelyard up` as a real subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from modelyard.fleet.process import free_port

API_KEY = "test-key-" + "x" * 24
METRICS_KEY = "metrics-key-" + "m" * 24  # what the tests scrape /metrics with (gateway.metrics_key_env)


class Cluster:
    def __init__(self, tmp: Path, models: list[dict[str, Any]], gateway: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.spec_path = tmp / "yard.yaml"
        spec = {"version": 1, "state_dir": str(tmp / "state"),
                "gateway": {"host": "127.0.0.1", "port": self.port, "metrics_key_env": "MODELYARD_METRICS_KEY",
                            **(gateway or {})}, "models": models,
                **(extra or {})}
        self.spec_path.write_text(yaml.safe_dump(spec))
        self.env = {**os.environ, "MODELYARD_API_KEY": API_KEY, "MODELYARD_METRICS_KEY": METRICS_KEY, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "up.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_replicas: int | None = None, timeout_s: float = 180) -> Cluster:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "modelyard", "up", "-f", str(self.spec_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        try:
            self.wait_ready(ready_replicas, timeout_s)
        except BaseException:
            self.stop()  # a cluster that never became ready is not left running
            raise
        return self

    def wait_ready(self, ready_replicas: int | None = None, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"modelyard up exited {self.proc.returncode}:\n{self.output()}")
            try:
                health = httpx.get(self.url + "/health", timeout=2).json()
                ready = sum(m["ready"] for m in health["models"].values())
                wanted = ready_replicas if ready_replicas is not None else sum(
                    m["replicas"] for m in health["models"].values())
                if ready >= wanted:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"cluster not ready after {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def replica_url(self, model: str, replica: int) -> str:
        """A replica's own URL, from the port its log says it started on."""
        text = (self.tmp / "state" / "logs" / f"{model}-{replica}.log").read_text()
        return "http://127.0.0.1:" + re.findall(rf"starting {re.escape(model)}/{replica} on port (\d+)", text)[-1]

    def engine_processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True) if p.is_running()]

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if not labels and line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
            if line.startswith(name + "{"):
                label_part = line[len(name) + 1:line.index("}")]
                got = ",".join(sorted(label_part.split(",")))
                if got == want:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_metric(self, name: str, value: float, timeout_s: float = 10, **labels: str) -> bool:
        """With several gateway workers, a gauge that another worker keeps is current within a fraction of a second."""
        deadline = time.monotonic() + timeout_s
        while self.metric(name, **labels) != value:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30) -> int:
        if self.proc is None:
            return 0
        children = []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in children:  # never leave an orphan behind, even when the test failed
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode
