"""Placement is a pure function of the swarm state: least served window, moves that only help."""

from __future__ import annotations

import math
import random

import pytest

from corolla.server.placement import block_throughput, blocks_that_fit, choose_blocks, plan_move, weakest
from corolla.swarm.discovery import ServerRecord
from tests.unit.synthetic import server, swarm


def spans(servers) -> dict[str, tuple[int, int]]:
    return {s.peer_id: (s.start, s.end) for s in servers}


# --- simulation helpers (what servers do, one at a time) -----------------------------------------
def join_one_by_one(total: int, sizes: list[int], rps: list[float], *, state: str = "online") -> list[ServerRecord]:
    """Each server picks its window from the state holding everyone announced before it."""
    servers: list[ServerRecord] = []
    for i, (n, r) in enumerate(zip(sizes, rps)):
        start = choose_blocks(block_throughput(swarm(total, *servers)), n)
        assert 0 <= start and start + n <= total, (start, n, total)
        servers.append(server(f"peer-{i:02d}", start, start + n, rps=r, state=state))
    return servers


def rebalance(total: int, servers: list[ServerRecord], *, rounds: int = 10, min_gain: float = 1.2):
    """Rounds of plan_move by every server (peer id order), each move applied before the next call.

    Returns (final servers, rounds until a round without moves or None, list of moves).
    Checks on every move that the swarm's weakest block never gets weaker and no block loses its
    last server.
    """
    by_id = {s.peer_id: s for s in servers}
    moves: list[tuple[str, int]] = []
    for r in range(rounds):
        moved = False
        for pid in sorted(by_id):
            state = swarm(total, *by_id.values())
            me = by_id[pid]
            start = plan_move(state, pid, me.info.inference_rps, min_gain)
            if start is None:
                continue
            n = me.end - me.start
            assert 0 <= start and start + n <= total and start != me.start
            before_tp, before_cov = block_throughput(state), state.coverage()
            by_id[pid] = server(pid, start, start + n, rps=me.info.inference_rps)
            after_state = swarm(total, *by_id.values())
            assert weakest(block_throughput(after_state)) >= weakest(before_tp)
            after_cov = after_state.coverage()
            assert all(a > 0 for a, b in zip(after_cov, before_cov) if b > 0), "a move uncovered a block"
            moves.append((pid, start))
            moved = True
        if not moved:
            return list(by_id.values()), r, moves
    return list(by_id.values()), None, moves


# --- block_throughput ----------------------------------------------------------------------------
def test_empty_swarm_has_zero_throughput_everywhere():
    assert block_throughput(swarm(5)) == [0.0] * 5


def test_throughput_is_rps_times_span_summed_over_servers():
    state = swarm(6, server("a", 0, 3, rps=2.0), server("b", 2, 6, rps=0.5))
    # a: 2 steps/s over 3 blocks -> 6 per block; b: 0.5 over 4 blocks -> 2 per block
    assert block_throughput(state) == pytest.approx([6.0, 6.0, 8.0, 2.0, 2.0, 2.0])


def test_offline_servers_do_not_count():
    state = swarm(4, server("a", 0, 4, rps=1.0), server("b", 0, 2, rps=100.0, state="offline"))
    assert block_throughput(state) == pytest.approx([4.0] * 4)


def test_exclude_leaves_out_that_peer_only():
    state = swarm(4, server("a", 0, 2, rps=1.0), server("b", 0, 4, rps=1.0))
    assert block_throughput(state, exclude="b") == pytest.approx([2.0, 2.0, 0.0, 0.0])
    assert block_throughput(state, exclude="a") == pytest.approx([4.0] * 4)
    assert block_throughput(state, exclude="nobody") == block_throughput(state)


def test_joining_server_with_measured_rps_counts_its_own_speed():
    state = swarm(4, server("a", 0, 4, rps=1.0), server("j", 0, 2, rps=3.0, state="joining"))
    assert block_throughput(state) == pytest.approx([10.0, 10.0, 4.0, 4.0])


def test_joining_server_without_rps_counts_as_a_typical_server():
    # known per-block values: 1*1=1, 2*2=4, 3*3=9 -> median 4
    state = swarm(
        10,
        server("a", 0, 1, rps=1.0),
        server("b", 1, 3, rps=2.0),
        server("c", 3, 6, rps=3.0),
        server("j", 6, 10, rps=0.0, state="joining"),
    )
    assert block_throughput(state) == pytest.approx([1, 4, 4, 9, 9, 9, 4, 4, 4, 4])


def test_typical_server_is_one_when_no_speed_is_known():
    state = swarm(4, server("j", 0, 3, rps=0.0, state="joining"), server("k", 2, 4, rps=0.0, state="joining"))
    assert block_throughput(state) == pytest.approx([1.0, 1.0, 2.0, 1.0])


def test_typical_server_ignores_offline_and_excluded_servers():
    state = swarm(
        4,
        server("a", 0, 1, rps=5.0),  # per block 5
        server("fast", 0, 4, rps=1000.0),  # excluded
        server("gone", 0, 4, rps=999.0, state="offline"),
        server("j", 2, 4, rps=0.0, state="joining"),
    )
    assert block_throughput(state, exclude="fast") == pytest.approx([5.0, 0.0, 5.0, 5.0])


def test_span_past_the_model_is_clipped():
    state = swarm(3, server("a", 1, 5, rps=1.0))
    assert block_throughput(state) == pytest.approx([0.0, 4.0, 4.0])


# --- choose_blocks -------------------------------------------------------------------------------
def test_empty_swarm_starts_at_block_zero():
    assert choose_blocks([0.0] * 8, 3) == 0


def test_chooses_the_window_with_least_throughput():
    assert choose_blocks([5, 5, 1, 1, 5, 5], 2) == 2
    assert choose_blocks([9, 9, 9, 9, 2, 3], 2) == 4


def test_chooses_a_gap():
    assert choose_blocks([3, 3, 0, 0, 3, 3], 2) == 2
    assert choose_blocks([3.0, 3.0, 3.0, 0.0], 1) == 3


def test_ties_go_to_the_lowest_start():
    assert choose_blocks([1, 1, 1, 1, 1, 1], 3) == 0
    assert choose_blocks([2, 0, 0, 2, 0, 0], 2) == 1


def test_window_is_clipped_to_the_model():
    assert choose_blocks([4, 1, 2], 3) == 0
    assert choose_blocks([4, 1, 2], 10) == 0


def test_window_always_fits_inside_the_model():
    rng = random.Random(7)
    for _ in range(200):
        tp = [rng.choice([0.0, 1.0, 2.5, 10.0]) for _ in range(rng.randint(1, 12))]
        n = rng.randint(1, 12)
        start = choose_blocks(tp, n)
        assert 0 <= start <= max(0, len(tp) - n)


def test_a_gap_comes_before_a_weakly_served_window():
    # block 0 has no server; blocks 3:6 are weakly served. The only window holding the gap is 0:3.
    assert choose_blocks([0, 100, 100, 1, 1, 1], 3) == 0


# --- plan_move -----------------------------------------------------------------------------------
def test_unknown_peer_does_not_move():
    state = swarm(6, server("a", 0, 3), server("b", 0, 3))
    assert plan_move(state, "stranger", 10.0) is None


def test_already_best_does_not_move():
    state = swarm(6, server("a", 0, 3), server("b", 3, 6))
    assert plan_move(state, "a", 10.0) is None
    assert plan_move(state, "b", 10.0) is None


def test_moves_to_close_a_gap():
    state = swarm(6, server("a", 0, 3), server("c", 0, 3))
    assert plan_move(state, "a", 10.0) == 3
    assert plan_move(state, "c", 10.0) == 3


def test_closes_a_gap_even_with_a_huge_min_gain():
    state = swarm(6, server("a", 0, 3), server("c", 0, 3))
    assert plan_move(state, "a", 10.0, min_gain=1e9) == 3


def test_never_uncovers_a_block_only_it_serves():
    # blocks 0:2 have no server; m alone serves 4:6. Moving to 0:3 closes one gap but opens another.
    state = swarm(6, server("b", 2, 4, rps=1.0), server("m", 3, 6, rps=1.0))
    assert plan_move(state, "m", 1.0) is None
    # the same without a gap: m stays, whatever the gain would be elsewhere
    state = swarm(6, server("a", 0, 3, rps=100.0), server("b", 0, 3, rps=100.0), server("m", 3, 6, rps=0.1))
    assert plan_move(state, "m", 0.1) is None


def test_moves_when_the_weakest_block_gains_enough():
    # per block: 0:3 -> 90 (a, c, d), 3:6 -> 30 (b). d at 3:6 makes the weakest 60: twice as strong.
    state = swarm(6, server("a", 0, 3), server("b", 3, 6), server("c", 0, 3), server("d", 0, 3))
    assert plan_move(state, "d", 10.0) == 3
    assert plan_move(state, "d", 10.0, min_gain=2.0) == 3  # exactly the gain asked for
    assert plan_move(state, "d", 10.0, min_gain=2.5) is None


def test_gain_is_judged_with_my_measured_speed():
    state = swarm(6, server("a", 0, 3), server("b", 3, 6), server("c", 0, 3), server("d", 0, 3))
    # announced 10 rps, but if d really does only 0.1 rps its move would add almost nothing
    assert plan_move(state, "d", 0.1) is None


def test_equal_options_do_not_cause_a_move():
    # a at 3:6 or 0:3 leaves the weakest block as strong: no churn
    state = swarm(6, server("a", 3, 6), server("b", 0, 3), server("c", 3, 6), server("d", 0, 3))
    assert plan_move(state, "a", 10.0) is None


def test_plan_move_is_deterministic():
    servers = [server("a", 0, 3), server("b", 3, 6), server("c", 0, 3), server("d", 0, 3)]
    s1 = swarm(6, *servers)
    s2 = swarm(6, *reversed(servers))
    assert [plan_move(s1, p, 10.0) for p in "abcd"] == [plan_move(s2, p, 10.0) for p in "abcd"]


def test_moves_to_close_a_gap_next_to_a_strong_server():
    # block 0's server left; f serves 1:3 strongly; s and m both serve 3:6 weakly.
    # m at 0:3 closes the gap and opens none (s still holds 3:6).
    state = swarm(6, server("f", 1, 3, rps=50.0), server("s", 3, 6, rps=1 / 3), server("m", 3, 6, rps=1 / 3))
    assert plan_move(state, "m", 1 / 3) == 0


# --- blocks_that_fit -----------------------------------------------------------------------------
def test_blocks_that_fit_divides_the_budget():
    assert blocks_that_fit([100] * 32, 1000) == 10
    assert blocks_that_fit([100] * 32, 1099) == 10


def test_blocks_that_fit_is_at_least_one_and_at_most_the_model():
    assert blocks_that_fit([100] * 32, 50) == 1
    assert blocks_that_fit([100] * 32, 0) == 1
    assert blocks_that_fit([1] * 32, 10**12) == 32


def test_blocks_that_fit_with_unknown_block_size_takes_the_model():
    assert blocks_that_fit([0] * 24, 1000) == 24
    assert blocks_that_fit([-1] * 24, 1000) == 24


def test_blocks_that_fit_any_window_of_uneven_blocks():
    """Heavy (mixture-of-experts) blocks among light ones: every window of the answer must fit."""
    sizes = [10, 10, 100, 100, 10, 10, 10, 10]
    assert blocks_that_fit(sizes, 200) == 2  # 100 + 100 is the heaviest pair
    assert blocks_that_fit(sizes, 209) == 2  # the heaviest window of 3 weighs 210
    assert blocks_that_fit(sizes, 210) == 3
    assert blocks_that_fit(sizes, 220) == 4
    assert blocks_that_fit(sizes, 10**6) == 8


# --- simulations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["online", "joining"])
def test_servers_joining_one_by_one_cover_the_model(state):
    for total in range(1, 41):
        size = math.ceil(total / 3)
        for k in range(3, 7):
            rps = [10.0 if state == "online" else 0.0] * k
            servers = join_one_by_one(total, [size] * k, rps, state=state)
            assert 0 not in swarm(total, *servers).coverage(online_only=False), (total, k, spans(servers))


def test_six_blocks_three_servers_one_leaves_the_rest_close_the_gap():
    servers = join_one_by_one(6, [3, 3, 3], [10.0] * 3)
    assert spans(servers) == {"peer-00": (0, 3), "peer-01": (3, 6), "peer-02": (0, 3)}
    rest = [s for s in servers if s.peer_id != "peer-01"]
    final, rounds, moves = rebalance(6, rest)
    assert rounds is not None
    assert sorted(spans(final).values()) == [(0, 3), (3, 6)]
    assert len(moves) == 1


def test_after_a_server_leaves_rebalancing_closes_the_gap_and_converges():
    for total in range(2, 25):
        size = math.ceil(total / 3)
        for k in range(3, 7):
            servers = join_one_by_one(total, [size] * k, [10.0] * k)
            for leaver in range(k):
                rest = servers[:leaver] + servers[leaver + 1 :]
                final, rounds, moves = rebalance(total, rest)
                case = (total, k, leaver, spans(rest), moves)
                assert rounds is not None, f"no convergence within 10 rounds: {case}"
                if (k - 1) * size >= total:  # the rest can cover the model
                    assert 0 not in swarm(total, *final).coverage(), case


def test_rebalancing_does_not_churn_when_no_move_helps():
    # 3 servers tile 9 blocks; one leaves: the gap cannot be closed without opening another
    servers = join_one_by_one(9, [3, 3, 3], [10.0] * 3)
    rest = servers[1:]
    final, rounds, moves = rebalance(9, rest)
    assert rounds == 0 and moves == []
    assert spans(final) == spans(rest)


def _big_simulation(seed: int):
    rng = random.Random(seed)
    total = 100
    sizes = [rng.randint(5, 40) for _ in range(40)]
    rps = [round(rng.uniform(0.5, 20.0), 3) for _ in range(40)]
    servers = join_one_by_one(total, sizes, rps)
    joined = swarm(total, *servers)
    # every server holding block 50 leaves at once
    rest = [s for s in servers if not s.start <= 50 < s.end]
    plans = [plan_move(swarm(total, *rest), s.peer_id, s.info.inference_rps) for s in rest]
    final, rounds, moves = rebalance(total, rest)
    return joined, rest, plans, final, rounds, moves


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_big_swarm_covers_the_model_and_heals(seed):
    joined, rest, plans, final, rounds, moves = _big_simulation(seed)
    assert 0 not in joined.coverage()
    assert 0 in swarm(100, *rest).coverage()  # the departure did open a gap
    assert rounds is not None, "no convergence within 10 rounds"
    assert 0 not in swarm(100, *final).coverage()
    assert moves  # somebody moved to close it


def test_big_swarm_is_deterministic():
    a = _big_simulation(3)
    b = _big_simulation(3)
    assert a[0] == b[0]  # same placements
    assert a[2] == b[2]  # same plans from the same state
    assert a[5] == b[5]  # same moves, in the same order
    assert spans(a[3]) == spans(b[3])


def test_joiners_of_mixed_speed_cover_the_model():
    # 0:2 at 10/block, 2:4 at 100/block; the third (3 blocks) must hold block 4, the only one uncovered
    servers = join_one_by_one(5, [2, 2, 3], [5.0, 50.0, 1.0])
    assert 0 not in swarm(5, *servers).coverage(), spans(servers)
