from __future__ import annotations

from modelyard.gateway.slo import RecentLatency


def test_p90s_over_the_window_only() -> None:
    recent = RecentLatency(window_s=10)
    assert recent.p90(0.0) == (None, None)
    for i in range(10):
        recent.add(float(i), ttft_s=0.1 * (i + 1), tpot_s=None if i % 2 else 0.01 * (i + 1))
    ttft, tpot = recent.p90(9.0)
    assert ttft == 1.0 and tpot == 0.09
    recent.add(100.0, ttft_s=5.0, tpot_s=0.5)
    assert recent.p90(100.0) == (5.0, 0.5)  # the old ones fell out of the window
