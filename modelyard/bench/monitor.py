from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

SATURATED_CPU_PCT = 90.0


@dataclass
class ClientUsage:
    """The load generator's own CPU use (percent of one core) and its event loop's lag."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_samples_pct: list[float] = field(default_factory=list)
    lag_samples_ms: list[float] = field(default_factory=list)
    system_cpu_pct: float = 0.0

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def saturated(self, threshold: float = SATURATED_CPU_PCT) -> bool:
        return is_saturated(self.cpu_pct, self.cpu_samples_pct, threshold)

    def summary(self) -> dict[str, Any]:
        lags = np.asarray(self.lag_samples_ms or [0.0])
        return {
            "client_cpu_pct": round(self.cpu_pct, 1),
            "client_cpu_peak_pct": round(max(self.cpu_samples_pct, default=self.cpu_pct), 1),
            "system_cpu_pct": round(self.system_cpu_pct, 1),
            "loop_lag_p99_ms": round(float(np.percentile(lags, 99)), 2),
            "loop_lag_max_ms": round(float(lags.max()), 2),
            "saturated": self.saturated(),
            "cpu_count": psutil.cpu_count() or 0,
        }


def is_saturated(cpu_pct: float, samples_pct: list[float], threshold: float = SATURATED_CPU_PCT) -> bool:
    """Whole-run use over the threshold, or most samples over it (a burst that saturated the loop for a while)."""
    busy = sum(1 for s in samples_pct if s >= threshold)
    return cpu_pct >= threshold or (len(samples_pct) >= 4 and busy * 2 >= len(samples_pct))


class ClientMonitor:
    """Samples this process's CPU time and the event loop's wake-up lag while a load level runs."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.usage = ClientUsage()
        self._proc = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0

    def _cpu(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    async def __aenter__(self) -> ClientMonitor:
        psutil.cpu_percent(None)
        self._t0, self._cpu0 = time.perf_counter(), self._cpu()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.usage.wall_s = time.perf_counter() - self._t0
        self.usage.cpu_s = self._cpu() - self._cpu0
        self.usage.system_cpu_pct = psutil.cpu_percent(None)

    async def _sample(self) -> None:
        last_t, last_cpu = self._t0, self._cpu0
        while True:
            planned = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now, cpu = time.perf_counter(), self._cpu()
            self.usage.lag_samples_ms.append(max(0.0, now - planned) * 1000.0)
            if now > last_t:
                self.usage.cpu_samples_pct.append(100.0 * (cpu - last_cpu) / (now - last_t))
            last_t, last_cpu = now, cpu
