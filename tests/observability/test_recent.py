"""modelyard/observability/recent.py: the status page's ring of the last minutes, and its merge across workers."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from modelyard.observability.recent import (
    BOUNDS,
    BUCKET_S,
    BUCKETS,
    FILE_PREFIX,
    RecentTraffic,
    error_kind,
    percentile,
    rejection_kind,
)

NOW = 1_000_000.0  # a perf_counter() reading, in seconds


def test_percentiles_come_from_the_log_spaced_histogram_within_one_step() -> None:
    recent = RecentTraffic()
    for i in range(100):
        recent.record("m", NOW, ttft_s=0.010 * (i + 1), e2e_s=0.5, tokens=3, status=200, error=None)
    summary = recent.window(NOW, others=[])["m"].summary()
    assert 0.50 / 1.25 <= summary["ttft_p50_s"] <= 0.50 * 1.25
    assert 0.90 / 1.25 <= summary["ttft_p90_s"] <= 0.90 * 1.25
    assert 0.5 / 1.25 <= summary["e2e_p90_s"] <= 0.5 * 1.25
    assert summary["requests_per_s"] == pytest.approx(100 / 60)
    assert summary["tokens_per_s"] == pytest.approx(300 / 60)
    assert summary["errors"] == {}
    assert len(summary["series"]["requests_per_s"]) == BUCKETS
    assert summary["series"]["requests_per_s"][-1] == pytest.approx(100 / BUCKET_S)


def test_an_empty_histogram_has_no_percentile_and_the_tail_is_bounded() -> None:
    assert percentile([0] * (len(BOUNDS) + 1), 0.9) is None
    counts = [0] * (len(BOUNDS) + 1)
    counts[-1] = 1  # longer than the last bound
    assert percentile(counts, 0.5) == BOUNDS[-1]


def test_errors_are_counted_by_kind_and_kept_out_of_the_latency() -> None:
    recent = RecentTraffic()
    recent.record("m", NOW, ttft_s=None, e2e_s=5.0, tokens=0, status=504, error="timeout")
    recent.record("m", NOW, ttft_s=None, e2e_s=0.1, tokens=0, status=502, error="ClientPayloadError")
    recent.record("m", NOW, ttft_s=0.01, e2e_s=0.1, tokens=0, status=500, error=None)
    recent.reject("m", rejection_kind(429), NOW)
    recent.reject("m", "no_ready_replica", NOW)
    summary = recent.window(NOW, others=[])["m"].summary()
    assert summary["errors"] == {"timeout": 1, "upstream_error": 1, "engine_5xx": 1, "limited": 1,
                                 "no_ready_replica": 1}
    assert summary["ttft_p50_s"] is None and summary["e2e_p50_s"] is None
    assert summary["series"]["errors"][-1] == 5
    assert error_kind(200, None) is None and error_kind(400, None) == "engine_4xx"
    assert error_kind(200, "client_disconnected") == "client_disconnected"


def test_old_buckets_leave_the_window_and_a_reused_slot_starts_empty() -> None:
    recent = RecentTraffic()
    recent.record("m", NOW, ttft_s=0.1, e2e_s=0.2, tokens=1, status=200, error=None)
    later = NOW + BUCKET_S * BUCKETS  # the same slot of the ring, one turn later
    recent.record("m", later, ttft_s=0.1, e2e_s=0.2, tokens=1, status=200, error=None)
    window = recent.window(later, others=[])["m"]
    assert sum(b.requests for b in window.buckets.values()) == 1
    assert window.summary()["requests_per_s"] == pytest.approx(1 / 60)
    # a minute on, the last minute's rate is empty but the chart still shows the request
    summary = recent.window(later + 61, others=[])["m"].summary()
    assert summary["requests_per_s"] == 0 and sum(summary["series"]["requests_per_s"]) > 0


def test_siblings_rings_add_up_and_their_files_are_read_back(tmp_path: Path) -> None:
    mine, sibling = RecentTraffic(tmp_path), RecentTraffic(tmp_path)
    mine.record("m", NOW, ttft_s=0.1, e2e_s=0.2, tokens=2, status=200, error=None)
    sibling.record("m", NOW, ttft_s=0.1, e2e_s=0.2, tokens=2, status=200, error=None)
    sibling.record("other", NOW, ttft_s=None, e2e_s=1.0, tokens=0, status=504, error="timeout")
    sibling.publish({"m/0": 3}, now=NOW)
    own = tmp_path / f"{FILE_PREFIX}{os.getpid()}.json"
    assert mine.others() == []  # its own file is not a sibling's
    own.rename(tmp_path / f"{FILE_PREFIX}1.json")  # as another process would have written it
    (tmp_path / f"{FILE_PREFIX}2.json").write_bytes(b"not json")  # a half-written or foreign file is skipped
    others = mine.others()
    assert len(others) == 1 and others[0]["in_flight"] == {"m/0": 3}
    windows = mine.window(NOW, others)
    assert sum(b.requests for b in windows["m"].buckets.values()) == 2
    assert windows["other"].summary()["errors"] == {"timeout": 1}
    assert orjson.loads((tmp_path / f"{FILE_PREFIX}1.json").read_bytes())["published_at"] > 0


def test_publishing_without_a_shared_folder_writes_nothing(tmp_path: Path) -> None:
    recent = RecentTraffic()
    recent.record("m", NOW, ttft_s=0.1, e2e_s=0.2, tokens=2, status=200, error=None)
    recent.publish({}, now=NOW)
    assert recent.others() == [] and list(tmp_path.iterdir()) == []
