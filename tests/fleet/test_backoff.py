from __future__ import annotations

from modelyard.fleet.replica import Backoff


def test_backoff_doubles_to_a_cap_and_resets_after_a_long_uptime() -> None:
    backoff = Backoff(initial_s=1, max_s=8, reset_after_s=60)
    assert [backoff.next_delay(uptime_s=1) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert backoff.next_delay(uptime_s=120) == 1
    assert backoff.next_delay(uptime_s=1) == 2
