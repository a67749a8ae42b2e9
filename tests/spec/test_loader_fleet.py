"""The strategies in yard.yaml: fixed, autoscaled and pooled replicas, and the machine's resources."""

from __future__ import annotations

from modelyard.spec.loader import parse_spec
from tests.spec.test_loader import problems

MODELS = """\
models:
  - name: code
    engine: simulator
    replicas: 2
  - name: chat
    engine: simulator
    replicas: {min: 0, max: 4, target_in_flight: 4, scale_to_zero_after_s: 300, cold_start_timeout_s: 120}
    slo: {ttft_p90_s: 2.0, tpot_p90_s: 0.1}
  - name: a
    engine: simulator
  - name: b
    engine: simulator
"""


def test_the_three_strategies_parse() -> None:
    spec = parse_spec(MODELS + "pools:\n  - {name: shared, slots: 1, members: [a, b], pinned: [a]}\n"
                               "resources: {cpus: 16, memory_gib: 120, gpus: 8}\n")
    code, chat, a, _ = spec.models
    assert (code.scaling, code.min_replicas, code.max_replicas) == (None, 2, 2)
    assert chat.scaling is not None and (chat.min_replicas, chat.max_replicas) == (0, 4)
    assert chat.slo is not None and chat.slo.ttft_p90_s == 2.0
    assert spec.pool_of("a") is spec.pools[0] and spec.pool_of("code") is None
    assert spec.resources.gpus == 8


def test_autoscaling_mistakes_name_the_field() -> None:
    text = MODELS.replace("replicas: {min: 0, max: 4,", "replicas: {min: 5, max: 4,")
    assert problems(text) == ["models[1].replicas: max: must be >= min (5) (yard.yaml:7)"]
    text = MODELS.replace("target_in_flight: 4", "target_inflight: 4")
    assert problems(text) == ["models[1].replicas.target_inflight: is not a known field (did you mean "
                              "'target_in_flight'?) (yard.yaml:7)"]
    assert problems(MODELS.replace("replicas: 2", "replicas: 0")) == ["models[0].replicas: must be >= 1 (yard.yaml:4)"]


def test_pool_mistakes_name_the_member() -> None:
    pools = ("pools:\n  - {name: p, slots: 1, members: [a, nope, code], pinned: [b]}\n"
             "  - {name: q, memory_gib: 8, members: [a, b]}\n")
    assert problems(MODELS + pools) == [
        "pools[0].members[1]: unknown model 'nope' (known: a, b, chat, code) (yard.yaml:14)",
        "pools[0].members[2]: 'code' must have `replicas: 1` (a pool member is one replica, woken or put to sleep) "
        "(yard.yaml:14)",
        "pools[0].pinned[0]: 'b' is not a member of this pool (yard.yaml:14)",
        "pools[1].members[0]: 'a' is already a member of pool 'p' (yard.yaml:15)",
        "pools[1].members[1]: 'b' needs memory_gib (at most the pool's 8) in a memory pool (yard.yaml:15)",
    ]
    assert problems(MODELS + "pools:\n  - {name: p, members: [a]}\n") == [
        "pools[0]: give exactly one of slots or memory_gib (yard.yaml:14)"]
