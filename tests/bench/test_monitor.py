from __future__ import annotations

import asyncio

from modelyard.bench.monitor import ClientMonitor, ClientUsage, is_saturated


def test_saturation_rule() -> None:
    assert is_saturated(95.0, [])
    assert not is_saturated(40.0, [30.0, 50.0, 40.0, 45.0])
    assert is_saturated(60.0, [99.0, 98.0, 20.0, 97.0])  # saturated for most of the run
    assert not is_saturated(60.0, [99.0, 98.0])  # too few samples to call it


def test_usage_summary() -> None:
    usage = ClientUsage(wall_s=10.0, cpu_s=9.5, cpu_samples_pct=[95.0], lag_samples_ms=[1.0, 3.0])
    summary = usage.summary()
    assert summary["client_cpu_pct"] == 95.0 and summary["saturated"] is True
    assert summary["loop_lag_max_ms"] == 3.0


def test_monitor_records_own_cpu() -> None:
    async def main() -> ClientUsage:
        async with ClientMonitor(interval_s=0.01) as monitor:
            await asyncio.sleep(0.05)
        return monitor.usage

    usage = asyncio.run(main())
    assert usage.wall_s > 0 and usage.cpu_s >= 0 and usage.lag_samples_ms
