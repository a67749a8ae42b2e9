"""modelyard/fleet/gateway_workers.py: how many workers, and the port kept while they come and go
(the processes themselves: tests/e2e/test_workers.py)."""

from __future__ import annotations

import os
import socket

import pytest

from modelyard.fleet.gateway_workers import reserve_port, worker_count
from modelyard.fleet.process import free_port
from modelyard.spec import SpecError, parse_spec

MODELS = "models:\n  - {name: sim, engine: simulator}\n"


def test_auto_is_one_worker_per_usable_cpu() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
    assert parse_spec(MODELS).gateway.workers == "auto"
    assert parse_spec("gateway: {workers: 4}\n" + MODELS).gateway.workers == 4


@pytest.mark.parametrize("value", ["0", "many", "true", "2.5"])
def test_a_wrong_worker_count_names_the_path(value: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(f"gateway: {{workers: {value}}}\n" + MODELS)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("gateway.workers: ")
    assert '"auto"' in info.value.problems[0]


def test_the_reserved_port_admits_workers_but_not_a_second_gateway() -> None:
    port = free_port()
    reservation = reserve_port("127.0.0.1", port)
    try:
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        worker.close()
        other = socket.socket()
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        other.close()
    finally:
        reservation.close()
