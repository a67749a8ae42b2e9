from __future__ import annotations

import random

import yaml

from modelyard.observability.metrics import RoutingTimings
from modelyard.routing.contracts import Context, RouteRequest
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.pipeline import Router
from modelyard.routing.plugins.precise_prefix import Params, PrecisePrefixScorer
from modelyard.spec import parse_spec


def endpoints(count: int = 4, events: bool = True) -> list[Endpoint]:
    return [Endpoint(model="m", replica=i, url=f"http://127.0.0.1:{9000 + i}", state=ReplicaState.READY,
                     kv_events=f"tcp://127.0.0.1:{7000 + i}" if events else None) for i in range(count)]


def keyed(keys: tuple[int, ...]) -> RouteRequest:
    request = RouteRequest("m", {"prompt": "x"})
    request.kv_keys = keys
    return request


def test_the_longest_held_prefix_over_the_requests_blocks() -> None:
    scorer = PrecisePrefixScorer(Params(), Context("m"))
    scorer.index.stored(1, [1, 2, 3])
    scorer.index.stored(2, [1, 2, 3, 4, 5, 6])
    scorer.index.stored(3, [9, 2, 3, 4])  # another prefix: its later blocks are not this request's
    assert scorer.score(keyed((1, 2, 3, 4, 5, 6, 7, 8)), endpoints()) == [0.0, 3 / 8, 6 / 8, 0.0]


def test_a_cold_prompt_goes_where_rendezvous_hashing_of_its_head_says_every_time() -> None:
    scorer = PrecisePrefixScorer(Params(), Context("m"))
    replicas = endpoints()
    first = scorer.score(keyed((11, 12, 13, 14, 15)), replicas)
    assert sorted(first) == [0.0, 0.0, 0.0, 1.0]
    assert scorer.score(keyed((11, 12, 13, 14, 99)), replicas) == first  # the same head: the same replica
    chosen = first.index(1.0)
    replicas[chosen].in_flight = 50  # loaded far beyond the others: the next in the hash order
    assert scorer.score(keyed((11, 12, 13, 14, 15)), replicas).index(1.0) != chosen


def test_replicas_without_events_and_requests_without_keys_score_nothing() -> None:
    scorer = PrecisePrefixScorer(Params(), Context("m"))
    scorer.index.stored(0, [1, 2])
    assert scorer.score(keyed((1, 2)), endpoints(events=False)) == [0.0] * 4
    assert scorer.score(RouteRequest("m", {}), endpoints()) == [0.0] * 4


def spec_for(engine: str, kv_events: bool) -> str:
    model = {"name": "m", "replicas": 4}
    if engine == "simulator":
        model.update(engine="simulator", kv_events=kv_events)
    else:
        model.update(engine="openai", urls=[f"http://127.0.0.1:{9000 + i}" for i in range(4)])
        if kv_events:
            model["kv_events"] = [f"tcp://127.0.0.1:{7000 + i}" for i in range(4)]
    return yaml.safe_dump({"models": [model]})


def test_precise_is_the_default_profile_of_a_model_that_publishes_kv_events() -> None:
    for engine, events, profile in (("simulator", True, "precise"), ("simulator", False, "default"),
                                    ("openai", False, "default"), ("openai", True, "precise")):
        router = Router(parse_spec(spec_for(engine, events)), EndpointTable(), RoutingTimings())
        assert router.pipelines["m"].profile == profile


def test_in_the_precise_profile_a_held_prefix_wins_until_its_replica_saturates() -> None:
    table = EndpointTable()
    for endpoint in endpoints():
        table.add(endpoint)
    router = Router(parse_spec(spec_for("simulator", True)), table, RoutingTimings(), rng=random.Random(1))
    scorer = next(s for s, _, _ in router.pipelines["m"].scorers if isinstance(s, PrecisePrefixScorer))
    scorer.index.stored(2, range(1, 33))
    picked = router.pick(keyed(tuple(range(1, 41))))
    assert picked is not None and picked.replica == 2
    table.of("m")[2].waiting = 30  # the engine queues: the saturation filter takes it out
    picked = router.pick(keyed(tuple(range(1, 41))))
    assert picked is not None and picked.replica != 2


def test_a_cold_prompt_goes_where_there_is_room_before_evicting_anything() -> None:
    scorer = PrecisePrefixScorer(Params(), Context("m"))
    replicas = endpoints()
    for endpoint in replicas:
        endpoint.kv_blocks = 100
    keys = tuple(range(500, 540))  # 40 blocks
    hashed = scorer.score(keyed(keys), replicas).index(1.0)
    scorer.routed(keyed(tuple(range(10_000, 10_070))), replicas[hashed])  # in use there: 70 + 40 > 100
    roomy = scorer.score(keyed(keys), replicas).index(1.0)
    assert roomy != hashed and scorer.room(replicas[roomy]) >= 40
    for endpoint in replicas:  # nobody has room: the replica whose prefixes are used least
        scorer.routed(keyed(tuple(range(20_000 + 1000 * endpoint.replica, 20_090 + 1000 * endpoint.replica))),
                      endpoint)
    scorer.routed(keyed(tuple(range(20_000 + 1000 * roomy, 20_090 + 1000 * roomy))), replicas[roomy])
    coldest = scorer.score(keyed(keys), replicas).index(1.0)
    assert coldest not in (hashed, roomy)
    off = PrecisePrefixScorer(Params(cold_room=False), Context("m"))
    off.routed(keyed(tuple(range(10_000, 10_070))), replicas[hashed])
    assert off.score(keyed(keys), replicas).index(1.0) == hashed


def test_blocks_the_engine_holds_but_nobody_used_lately_are_room() -> None:
    now = [0.0]
    scorer = PrecisePrefixScorer(Params(horizon_s=10.0, reserve_s=1.0), Context("m", clock=lambda: now[0]))
    replicas = endpoints()
    for endpoint in replicas:
        endpoint.kv_blocks = 100
    keys = tuple(range(500, 540))
    hashed = scorer.score(keyed(keys), replicas).index(1.0)
    old = keyed(tuple(range(10_000, 10_090)))
    scorer.routed(old, replicas[hashed])
    scorer.index.stored(hashed, old.kv_keys or ())  # its events: the cache holds them (full, for an LRU)
    assert scorer.score(keyed(keys), replicas).index(1.0) != hashed
    now[0] = 11.0  # nobody sent them since: LRU evicts them first, so they do not keep a new prefix out
    assert scorer.score(keyed(keys), replicas).index(1.0) == hashed and scorer.room(replicas[hashed]) == 100


def test_new_prefixes_spread_over_the_caches_while_they_fill() -> None:
    scorer = PrecisePrefixScorer(Params(), Context("m"))
    replicas = endpoints()
    for endpoint in replicas:
        endpoint.kv_blocks = 400
    placed = []
    for group in range(8):
        keys = tuple(range(group * 1000, group * 1000 + 40))
        chosen = scorer.score(keyed(keys), replicas).index(1.0)
        scorer.routed(keyed(keys), replicas[chosen])
        scorer.index.stored(chosen, keys)  # what its events say once it served the prompt
        placed.append(chosen)
    assert sorted(placed.count(r) for r in range(4)) == [2, 2, 2, 2]


def test_a_burst_of_a_new_prefix_follows_its_first_request_before_any_event() -> None:
    now = [0.0]
    scorer = PrecisePrefixScorer(Params(reserve_s=2.0), Context("m", clock=lambda: now[0]))
    replicas = endpoints()
    for endpoint in replicas:
        endpoint.kv_blocks = 100
    first = keyed(tuple(range(100, 160)))  # 60 blocks: one copy fits a replica
    chosen = scorer.score(first, replicas).index(1.0)
    scorer.routed(first, replicas[chosen])  # no event yet: the engine still queues it
    same_prefix = keyed((*range(100, 160), *range(900, 905)))
    scores = scorer.score(same_prefix, replicas)
    assert scores.index(max(scores)) == chosen and max(scores) == 60 / 65  # follows the first, as if held
    short_head = keyed((*range(100, 104), *range(5000, 5056)))  # only the first blocks alike: another prompt
    assert scorer.score(short_head, replicas).index(1.0) != chosen  # and the room the first one took counts
    now[0] = 3.0  # pending over, and no event ever came: what the engine holds bounds what is in use
    assert scorer.score(keyed((1,)), replicas) and scorer.room(replicas[chosen]) == 100
