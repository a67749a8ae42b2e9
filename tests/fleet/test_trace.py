from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from modelyard.cli import main
from modelyard.fleet.autoscaler import Sample
from modelyard.fleet.trace import TraceWriter, read_trace, replay
from modelyard.spec.scaling import ScalingSpec

SPEC = """\
models:
  - name: chat
    engine: simulator
    replicas: {min: 0, max: 4, target_in_flight: 2, scale_to_zero_after_s: 20, scale_down_delay_s: 5}
"""


def record(path: Path) -> None:
    """A spike: idle 10 s, 8 requests in flight for 30 s, idle 60 s; the recorded cluster ran 4 replicas all along."""
    writer = TraceWriter(path)
    for tick in range(200):
        at = tick * 0.5
        load = 8 if 10 <= at < 40 else 0
        writer.write(Sample(at=at, ready=4, starting=0, in_flight=load, queued=0, arrivals=1 if load else 0), 4)
    writer.close()


def test_a_recorded_trace_replays_the_policy_and_counts_replica_seconds(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    record(path)
    samples = list(read_trace(path))
    assert len(samples) == 200 and samples[0][1] == 4
    result = replay(samples, ScalingSpec.model_validate({"min": 0, "max": 4, "target_in_flight": 2,
                                                         "scale_to_zero_after_s": 20, "scale_down_delay_s": 5}),
                    None, 2.0)
    assert result.recorded_replica_seconds == 4 * 99.5
    assert result.replica_seconds < result.recorded_replica_seconds  # it follows the load, then goes to zero
    assert result.decisions[-1][2] == 0 and max(d[2] for d in result.decisions) == 4


def test_the_replay_command_prints_decisions_and_the_ratio(tmp_path: Path) -> None:
    (tmp_path / "yard.yaml").write_text(SPEC)
    record(tmp_path / "chat.jsonl")
    out = CliRunner().invoke(main, ["autoscale", "replay", str(tmp_path / "chat.jsonl"), "-f",
                                    str(tmp_path / "yard.yaml"), "--set", "scale_to_zero_after_s=30"])
    assert out.exit_code == 0, out.output
    assert "replica-seconds:" in out.output and "recorded (0." in out.output and "to zero" in out.output
    bad = CliRunner().invoke(main, ["autoscale", "replay", str(tmp_path / "chat.jsonl"), "-f",
                                    str(tmp_path / "yard.yaml"), "--set", "max=0"])
    assert bad.exit_code == 2 and "error" in bad.output
