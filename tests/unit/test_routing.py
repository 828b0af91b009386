"""Routing is a pure function of the swarm state: fastest chain, deterministic, names what is missing."""

from __future__ import annotations

import math
import random

import pytest

from corolla.errors import NoRouteError
from corolla.protocol.messages import ServerState
from corolla.swarm.discovery import SwarmState
from corolla.swarm.routing import DEFAULT_HOP_S, MIN_RPS, Hop, missing_spans, plan_chain, step_cost_s
from tests.unit.synthetic import server, swarm


def chain_cost(state: SwarmState, chain: list[Hop], rtt_s: dict[str, float] | None = None) -> float:
    by_id = {s.peer_id: s for s in state.servers}
    rtt_s = rtt_s or {}
    return sum(step_cost_s(by_id[h.peer_id], h.start, h.end, rtt_s.get(h.peer_id, DEFAULT_HOP_S)) for h in chain)


# --- step_cost_s ---------------------------------------------------------------------------------
def test_step_cost_is_rtt_plus_share_of_span_time():
    s = server("a", 0, 4, rps=2.0)  # one decode step through all 4 blocks takes 0.5 s
    assert step_cost_s(s, 0, 4, 0.01) == pytest.approx(0.51)
    assert step_cost_s(s, 1, 3, 0.0) == pytest.approx(0.25)
    assert step_cost_s(s, 3, 4, 0.0) == pytest.approx(0.125)


def test_step_cost_grows_with_active_sessions():
    idle = server("a", 0, 4, rps=2.0, sessions=0)
    busy = server("a", 0, 4, rps=2.0, sessions=10)
    assert step_cost_s(busy, 0, 4, 0.0) == pytest.approx(2 * step_cost_s(idle, 0, 4, 0.0))


def test_step_cost_of_zero_rps_server_is_finite_and_huge():
    s = server("a", 0, 4, rps=0.0)
    cost = step_cost_s(s, 0, 4, 0.0)
    assert math.isfinite(cost)
    assert cost == pytest.approx(1.0 / MIN_RPS)


# --- missing_spans -------------------------------------------------------------------------------
def test_missing_spans_with_no_servers_is_the_whole_range():
    assert missing_spans([], 0, 8) == [(0, 8)]
    assert missing_spans([], 3, 5) == [(3, 5)]


def test_missing_spans_fully_covered_is_empty():
    assert missing_spans([server("a", 0, 4), server("b", 4, 8)], 0, 8) == []
    assert missing_spans([server("a", 0, 8)], 2, 6) == []


def test_missing_spans_lists_every_gap_in_order():
    servers = [server("b", 5, 6), server("a", 1, 3)]
    assert missing_spans(servers, 0, 8) == [(0, 1), (3, 5), (6, 8)]


def test_missing_spans_only_within_the_range():
    servers = [server("a", 0, 4), server("b", 9, 12)]
    assert missing_spans(servers, 2, 10) == [(4, 9)]
    assert missing_spans(servers, 4, 9) == [(4, 9)]
    assert missing_spans(servers, 5, 5) == []


# --- plan_chain: choosing --------------------------------------------------------------------------
def test_single_server_covering_everything():
    assert plan_chain(swarm(8, server("a", 0, 8))) == [Hop("a", 0, 8)]


def test_two_servers_chain_in_order():
    st = swarm(8, server("b", 4, 8), server("a", 0, 4))
    assert plan_chain(st) == [Hop("a", 0, 4), Hop("b", 4, 8)]


def test_enters_a_server_in_the_middle_of_its_span():
    st = swarm(8, server("a", 0, 5), server("b", 3, 8))
    assert plan_chain(st) == [Hop("a", 0, 5), Hop("b", 5, 8)]


def test_equal_cost_prefers_fewer_hops_even_against_a_smaller_peer_id():
    # dyadic numbers so the two costs are exactly equal: a+b = 1.0 + 1.0, z = 2.0
    st = swarm(8, server("a", 0, 4, rps=1.0), server("b", 4, 8, rps=1.0), server("z", 0, 8, rps=0.5))
    rtt = {"a": 0.0, "b": 0.0, "z": 0.0}
    assert chain_cost(st, [Hop("a", 0, 4), Hop("b", 4, 8)], rtt) == chain_cost(st, [Hop("z", 0, 8)], rtt)
    assert plan_chain(st, rtt_s=rtt) == [Hop("z", 0, 8)]


def test_equal_cost_prefers_fewer_hops_even_when_the_longer_chain_is_found_first():
    # every block costs 0.125 s on every server except "p3" (0.25 s/block + 0.125 s round trip).
    # 0 -p4-> 1 -p1-> 3 -p0-> 5 reaches block 5 first (in 3 hops); 0 -p2-> 4 -p0-> 5 reaches it at the
    # same cost in 2 hops, and only keeping the fewer hops there gives the 3-hop optimum overall.
    st = swarm(
        8,
        server("p0", 3, 5, rps=4.0),
        server("p1", 1, 3, rps=4.0),
        server("p2", 0, 4, rps=2.0),
        server("p3", 0, 8, rps=0.5),
        server("p4", 0, 1, rps=8.0),
    )
    rtt = {"p0": 0.0, "p1": 0.0, "p2": 0.0, "p3": 0.125, "p4": 0.0}
    longer = [Hop("p4", 0, 1), Hop("p1", 1, 3), Hop("p0", 3, 5), Hop("p3", 5, 8)]
    best = [Hop("p2", 0, 4), Hop("p0", 4, 5), Hop("p3", 5, 8)]
    assert chain_cost(st, longer, rtt) == chain_cost(st, best, rtt) == 1.5
    assert plan_chain(st, rtt_s=rtt) == best


def test_one_hop_wins_over_two_at_equal_speed():
    st = swarm(8, server("a", 0, 4), server("b", 4, 8), server("c", 0, 8))
    assert plan_chain(st) == [Hop("c", 0, 8)]


def test_fastest_chain_wins_over_fewer_hops():
    st = swarm(8, server("a", 0, 8, rps=1.0), server("b", 0, 4, rps=100.0), server("c", 4, 8, rps=100.0))
    assert plan_chain(st) == [Hop("b", 0, 4), Hop("c", 4, 8)]


def test_slow_server_is_avoided_when_an_equivalent_fast_one_exists():
    st = swarm(8, server("a", 0, 8, rps=1.0), server("b", 0, 8, rps=100.0))
    assert plan_chain(st) == [Hop("b", 0, 8)]


def test_loaded_server_is_avoided_when_an_idle_equivalent_exists():
    st = swarm(8, server("a", 0, 8, sessions=20), server("b", 0, 8, sessions=0))
    assert plan_chain(st) == [Hop("b", 0, 8)]


def test_measured_round_trip_time_is_taken_into_account():
    st = swarm(8, server("a", 0, 8), server("b", 0, 8))
    assert plan_chain(st, rtt_s={"a": 1.0}) == [Hop("b", 0, 8)]
    assert plan_chain(st, rtt_s={"b": 1.0}) == [Hop("a", 0, 8)]


def test_ties_break_on_peer_id():
    st = swarm(8, server("b", 0, 8), server("a", 0, 8), server("c", 0, 8))
    assert plan_chain(st) == [Hop("a", 0, 8)]


def test_two_hop_ties_break_on_peer_id():
    st = swarm(8, server("d", 4, 8), server("c", 4, 8), server("b", 0, 4), server("a", 0, 4))
    assert plan_chain(st) == [Hop("a", 0, 4), Hop("c", 4, 8)]


def test_same_result_on_every_call():
    st = swarm(8, *(server(f"p{i}", i % 4, 4 + i % 4) for i in range(8)), server("q", 4, 8), server("r", 7, 8))
    first = plan_chain(st)
    assert all(plan_chain(st) == first for _ in range(5))


def test_ties_break_on_peer_id_even_if_the_state_is_not_sorted():
    st = SwarmState("m", 8, (server("b", 0, 8), server("a", 0, 8)))
    assert plan_chain(st) == [Hop("a", 0, 8)]


# --- plan_chain: filters -----------------------------------------------------------------------------
def test_banned_servers_are_not_used():
    st = swarm(8, server("a", 0, 8, rps=100.0), server("b", 0, 8, rps=1.0))
    assert plan_chain(st, banned={"a"}) == [Hop("b", 0, 8)]


def test_only_allowed_servers_are_used():
    st = swarm(8, server("a", 0, 8, rps=100.0), server("b", 0, 4), server("c", 4, 8))
    assert plan_chain(st, allowed={"b", "c"}) == [Hop("b", 0, 4), Hop("c", 4, 8)]


def test_banned_wins_over_allowed():
    st = swarm(8, server("a", 0, 8), server("b", 0, 8))
    assert plan_chain(st, allowed={"a", "b"}, banned={"a"}) == [Hop("b", 0, 8)]


def test_empty_allowed_set_means_no_server():
    st = swarm(8, server("a", 0, 8))
    with pytest.raises(NoRouteError) as e:
        plan_chain(st, allowed=set())
    assert e.value.missing == [(0, 8)]


def test_banning_everyone_names_every_block():
    st = swarm(8, server("a", 0, 4), server("b", 4, 8))
    with pytest.raises(NoRouteError, match="^blocks 0–7 of m have no server online$"):
        plan_chain(st, banned=["a", "b"])


@pytest.mark.parametrize("state", ["joining", "offline"])
def test_servers_not_online_are_skipped(state):
    st = swarm(8, server("a", 0, 8, rps=1000.0, state=state), server("b", 0, 8, rps=1.0))
    assert plan_chain(st) == [Hop("b", 0, 8)]


@pytest.mark.parametrize("state", ["joining", "offline"])
def test_only_servers_not_online_is_no_route(state):
    st = swarm(8, server("a", 0, 8, state=state))
    with pytest.raises(NoRouteError) as e:
        plan_chain(st)
    assert e.value.missing == [(0, 8)]


# --- plan_chain: sub-ranges ----------------------------------------------------------------------------
def test_sub_range_of_one_server():
    assert plan_chain(swarm(8, server("a", 0, 8)), 2, 6) == [Hop("a", 2, 6)]


def test_sub_range_across_two_servers():
    st = swarm(8, server("a", 0, 4), server("b", 4, 8))
    assert plan_chain(st, 3, 5) == [Hop("a", 3, 4), Hop("b", 4, 5)]
    assert plan_chain(st, 4) == [Hop("b", 4, 8)]
    assert plan_chain(st, end=4) == [Hop("a", 0, 4)]


def test_sub_range_ignores_gaps_outside_it():
    st = swarm(8, server("a", 2, 5))
    assert plan_chain(st, 2, 5) == [Hop("a", 2, 5)]
    assert plan_chain(st, 3, 4) == [Hop("a", 3, 4)]


def test_empty_range_is_an_empty_chain():
    assert plan_chain(swarm(8, server("a", 0, 8)), 3, 3) == []


# --- NoRouteError ------------------------------------------------------------------------------------------
def test_no_route_names_a_missing_range():
    st = swarm(20, server("a", 0, 12), server("b", 18, 20))
    with pytest.raises(NoRouteError) as e:
        plan_chain(st)
    assert str(e.value) == "blocks 12–17 of m have no server online"
    assert e.value.missing == [(12, 18)]
    assert e.value.model_id == "m"
    assert e.value.retryable


def test_no_route_names_a_single_missing_block():
    st = swarm(8, server("a", 0, 3), server("b", 4, 8), model_id="org.model-1")
    with pytest.raises(NoRouteError) as e:
        plan_chain(st)
    assert str(e.value).startswith("block 3 of org.model-1 ")
    assert e.value.missing == [(3, 4)]


def test_no_route_names_every_gap():
    st = swarm(8, server("a", 1, 3), server("b", 5, 6))
    with pytest.raises(NoRouteError) as e:
        plan_chain(st)
    assert str(e.value) == "blocks 0, 3–4, 6–7 of m have no server online"


def test_no_route_in_a_sub_range_names_only_blocks_in_it():
    st = swarm(8, server("a", 0, 2))
    with pytest.raises(NoRouteError) as e:
        plan_chain(st, 0, 3)
    assert e.value.missing == [(2, 3)]
    assert str(e.value).startswith("block 2 of m ")


def test_no_route_ignores_banned_servers_when_naming_blocks():
    st = swarm(8, server("a", 0, 4), server("b", 4, 8), server("c", 4, 6))
    with pytest.raises(NoRouteError) as e:
        plan_chain(st, banned={"b"})
    assert e.value.missing == [(6, 8)]


# --- against a brute-force optimum on random swarms -------------------------------------------------------
def _optimum(state: SwarmState, start: int, end: int, rtt_s: dict[str, float]) -> float:
    """Cheapest cost by plain dynamic programming over block positions (positions only grow)."""
    best = [math.inf] * (end + 1)
    best[end] = 0.0
    for pos in range(end - 1, start - 1, -1):
        for s in state.servers:
            if s.info.state is ServerState.ONLINE and s.start <= pos < s.end:
                nxt = min(s.end, end)
                best[pos] = min(best[pos], step_cost_s(s, pos, nxt, rtt_s.get(s.peer_id, DEFAULT_HOP_S)) + best[nxt])
    return best[start]


def test_random_swarms_get_a_valid_optimal_chain_or_a_correct_error():
    rng = random.Random(1234)
    routed = failed = 0
    for _ in range(300):
        n = rng.randint(1, 8)
        servers = []
        for i in range(rng.randint(0, 6)):
            a = rng.randrange(n)
            b = rng.randint(a + 1, n)
            servers.append(
                server(
                    f"p{i:02d}",
                    a,
                    b,
                    rps=rng.choice([0.5, 1.0, 5.0, 50.0]),
                    state=rng.choice(["online", "online", "online", "joining"]),
                    sessions=rng.randint(0, 3),
                )
            )
        st = swarm(n, *servers)
        rtt = {s.peer_id: rng.choice([0.001, 0.01, 0.1]) for s in servers if rng.random() < 0.5}
        start = rng.randrange(n)
        end = rng.randint(start + 1, n)
        online = [s for s in st.servers if s.info.state is ServerState.ONLINE]
        try:
            chain = plan_chain(st, start, end, rtt_s=rtt)
        except NoRouteError as e:
            failed += 1
            assert e.missing == missing_spans(online, start, end) != []
            continue
        routed += 1
        by_id = {s.peer_id: s for s in st.servers}
        assert chain[0].start == start and chain[-1].end == end
        for prev, nxt in zip(chain, chain[1:]):
            assert prev.end == nxt.start
        for hop in chain:
            s = by_id[hop.peer_id]
            assert s.info.state is ServerState.ONLINE
            assert s.start <= hop.start < hop.end <= s.end
        assert chain_cost(st, chain, rtt) == pytest.approx(_optimum(st, start, end, rtt), rel=1e-9)
    assert routed > 50 and failed > 20  # the generator exercises both outcomes


def _optimum_with_hops(
    state: SwarmState, start: int, end: int, rtt_s: dict[str, float], most_hops: bool = False
) -> tuple[float, int]:
    """Cheapest (cost, hops): the fewest hops among the cheapest chains, or the most with ``most_hops``."""
    sign = -1 if most_hops else 1
    best: list[tuple[float, int]] = [(math.inf, 0)] * (end + 1)
    best[end] = (0.0, 0)
    for pos in range(end - 1, start - 1, -1):
        for s in state.servers:
            if s.info.state is ServerState.ONLINE and s.start <= pos < s.end:
                nxt = min(s.end, end)
                cost = step_cost_s(s, pos, nxt, rtt_s.get(s.peer_id, DEFAULT_HOP_S)) + best[nxt][0]
                best[pos] = min(best[pos], (cost, best[nxt][1] + sign))
    return best[start][0], sign * best[start][1]


def test_random_swarms_with_exact_ties_get_the_fewest_hops_among_the_fastest_chains():
    # powers of two everywhere and only two per-block costs, so equal-cost chains really are equal
    # (no rounding) and the hop tie-break decides
    rng = random.Random(99)
    ties = 0
    for _ in range(400):
        n = 8
        servers = []
        for i in range(rng.randint(2, 8)):
            length = rng.choice([1, 2, 4, 8])
            a = rng.randrange(0, n - length + 1)
            per_block_s = rng.choice([0.125, 0.25])
            servers.append(server(f"p{i}", a, a + length, rps=1.0 / (per_block_s * length)))
        st = swarm(n, *servers)
        rtt = {s.peer_id: rng.choice([0.0, 0.0, 0.125]) for s in servers}
        try:
            chain = plan_chain(st, rtt_s=rtt)
        except NoRouteError:
            continue
        cost, hops = _optimum_with_hops(st, 0, n, rtt)
        assert (chain_cost(st, chain, rtt), len(chain)) == (cost, hops), chain
        # cases where a chain with more hops costs exactly the same (the tie-break was needed)
        ties += _optimum_with_hops(st, 0, n, rtt, most_hops=True) != (cost, hops)
    assert ties > 20, ties
