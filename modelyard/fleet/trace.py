"""What `up` records for each autoscaled model (its samples, one JSON line each, in `state_dir/traces/<model>.jsonl`),
and `modelyard autoscale replay`, which runs a policy over such a trace without a cluster: the same `decide`, its
replicas taken as given at once (no start time), so that policies compare on the same load."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from modelyard.fleet.autoscaler import Memory, Sample, decide
from modelyard.spec.scaling import ScalingSpec, SLOSpec

MAX_TRACE_BYTES = 32 * 1024 * 1024  # then the file is rotated to .1 (one old file kept)


class TraceWriter:
    """Appends samples to one model's trace file; bounded by rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def write(self, sample: Sample, desired: int) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        self._file.write(orjson.dumps({**dataclasses.asdict(sample), "desired": desired}) + b"\n")
        self._file.flush()
        if self._file.tell() > MAX_TRACE_BYTES:
            self._file.close()
            self.path.replace(self.path.with_suffix(".jsonl.1"))
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_trace(path: Path) -> Iterator[tuple[Sample, int]]:
    """Each recorded sample with the replicas that were desired then; lines that do not parse are skipped."""
    names = {f.name for f in dataclasses.fields(Sample)}
    with path.open("rb") as lines:
        for line in lines:
            try:
                item = orjson.loads(line)
                sample = Sample(**{k: v for k, v in item.items() if k in names})
            except (orjson.JSONDecodeError, TypeError):
                continue
            yield sample, int(item.get("desired", sample.ready + sample.starting))


@dataclass(frozen=True)
class Replay:
    decisions: list[tuple[float, int, int, str]]  # (seconds from the start, from, to, reason)
    replica_seconds: float  # the policy's
    recorded_replica_seconds: float  # what the recorded cluster ran
    duration_s: float
    samples: int


def replay(samples: list[tuple[Sample, int]], spec: ScalingSpec, slo: SLOSpec | None, target: float) -> Replay:
    """Runs `decide` over the recorded load; the replicas it wants are taken to be ready at the next sample."""
    memory, replicas = Memory(), samples[0][1] if samples else 0
    decisions: list[tuple[float, int, int, str]] = []
    ours = theirs = 0.0
    start = samples[0][0].at if samples else 0.0
    for index, (recorded, desired) in enumerate(samples):
        sample = dataclasses.replace(recorded, ready=replicas, starting=0)
        proposal, memory = decide(spec, slo, target, memory, sample)
        if proposal.replicas != replicas:
            decisions.append((recorded.at - start, replicas, proposal.replicas, proposal.reason))
        if index + 1 < len(samples):
            step = samples[index + 1][0].at - recorded.at
            ours += proposal.replicas * step
            theirs += desired * step
        replicas = proposal.replicas
    duration = samples[-1][0].at - start if samples else 0.0
    return Replay(decisions, ours, theirs, duration, len(samples))
