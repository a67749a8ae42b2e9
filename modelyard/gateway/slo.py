"""The recent latency of a model with an SLO, as its clients saw it (queueing and a cold start included), for the
autoscaler: each gateway worker reports its p90s to the control plane (fleet/gateway_workers.py)."""

from __future__ import annotations

from collections import deque

WINDOW_S = 30.0
MAX_SAMPLES = 2048


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(0.9 * len(values)))]


class RecentLatency:
    def __init__(self, window_s: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float, float | None]] = deque(maxlen=max_samples)

    def add(self, at: float, ttft_s: float, tpot_s: float | None) -> None:
        self._samples.append((at, ttft_s, tpot_s))

    def p90(self, now: float) -> tuple[float | None, float | None]:
        """TTFT and TPOT p90 over the window (None where there is no sample)."""
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        ttfts = [s[1] for s in self._samples]
        tpots = [s[2] for s in self._samples if s[2] is not None]
        return _p90(ttfts), _p90(tpots)
