"""Cohorts keep concurrent sessions batched together along the chain (a hint, never a hang)."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest
import torch

from corolla.client.head_batching import HeadBatcher
from corolla.errors import BadRequestError
from corolla.protocol.cohorts import CohortGate, next_cohorts
from corolla.protocol.messages import Cohort, InferenceMeta, decode_meta, encode_meta


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gate_waits_for_missing_members_until_the_deadline():
    clock = Clock()
    gate = CohortGate(0.01, clock)
    a = Cohort(id="aa", size=3)
    gate.arrived(a)
    gate.arrived(a)
    assert gate.wait_s_for([a]) == pytest.approx(0.01)
    assert gate.wait_s_for([a], limit=2) == 0  # a server with 2 open sessions cannot get a third
    clock.now += 0.004
    assert gate.wait_s_for([a, None]) == pytest.approx(0.006)
    gate.arrived(a)
    assert gate.wait_s_for([a]) == 0  # complete
    b = Cohort(id="bb", size=2)
    gate.arrived(b)
    clock.now += 0.011
    assert gate.wait_s_for([b]) == 0  # late: go without the straggler
    gate.arrived(b)  # the straggler itself does not wait either
    assert gate.wait_s_for([b]) == 0


def test_gate_disabled_and_unknown_cohorts_never_wait():
    gate = CohortGate(0.0)
    c = Cohort(id="cc", size=5)
    gate.arrived(c)
    assert gate.wait_s_for([c]) == 0
    assert CohortGate(1.0).wait_s_for([c]) == 0  # never arrived here: nothing to wait for


def test_gate_forgets_old_cohorts():
    clock = Clock()
    gate = CohortGate(0.01, clock)
    for i in range(3000):
        gate.arrived(Cohort(id=f"{i:x}", size=2))
        clock.now += 0.01
    assert len(gate._seen) <= 1024


def test_next_cohorts_group_by_destination():
    out = next_cohorts(["A", "B", "A", None, "C", "A"])
    assert out[1] is None and out[3] is None and out[4] is None  # alone, or no next step
    assert out[0] == out[2] == out[5] and out[0].size == 3
    other = next_cohorts(["A", "A"])
    assert other[0].id != out[0].id  # a fresh id per batch


def test_next_cohorts_split_into_micro_batches_of_at_least_two():
    parts = {"A": 2, "B": 4}
    out = next_cohorts(["A"] * 8 + ["B"] * 3, parts.get)
    a = {c.id: c.size for c in out[:8]}
    assert sorted(a.values()) == [4, 4]  # two micro-batches of four for A
    assert len({c.id for c in out[8:]}) == 1 and out[8].size == 3  # 3 members cannot make 4 parts of two
    assert next_cohorts(["A", "A", "A"], parts.get)[0].size == 3


def test_cohort_on_the_wire_is_validated():
    meta = InferenceMeta(position=3, cohort=Cohort(id="0f" * 8, size=4))
    assert decode_meta(encode_meta(meta), InferenceMeta) == meta
    bad_cohorts = ({"id": "x!", "size": 2}, {"id": "ab", "size": 1}, {"id": "ab", "size": 10**6},
                   {"id": "a" * 33, "size": 2})
    for bad in bad_cohorts:
        with pytest.raises(BadRequestError, match="cohort"):
            decode_meta(msgpack.packb({"position": 0, "cohort": bad}), InferenceMeta)


def test_head_waits_for_its_cohort_and_hands_out_the_next_one():
    batcher = HeadBatcher(lambda h: h * 2, cohort_wait_s=30.0)
    cohort = Cohort(id="abcd", size=2)
    results = {}

    def run(i, destination):
        results[i] = batcher.step_logits(torch.full((1, 3), float(i)), cohort, destination)

    first = threading.Thread(target=run, args=(1, "server-A"))
    first.start()
    deadline = time.monotonic() + 10
    while batcher.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # the first member is waiting for the second, not computing alone
    assert batcher.calls == 0
    run(2, "server-A")
    first.join(timeout=10)
    assert batcher.calls == 1 and batcher.rows == 2
    (l1, c1), (l2, c2) = results[1], results[2]
    assert torch.equal(l1, torch.full((1, 3), 2.0)) and torch.equal(l2, torch.full((1, 3), 4.0))
    assert c1 == c2 and c1.size == 2 and c1.id != cohort.id  # together again to server-A


def test_head_computes_complete_cohorts_without_waiting_for_incomplete_ones():
    batcher = HeadBatcher(lambda h: h, cohort_wait_s=30.0)
    done = []

    def run(value, cohort):
        batcher.step_logits(torch.full((1, 1), float(value)), cohort, None)
        done.append(value)

    incomplete = threading.Thread(target=run, args=(1, Cohort(id="01", size=2)))
    incomplete.start()
    deadline = time.monotonic() + 10
    while batcher.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    run(2, None)  # no cohort: computed at once, while the other keeps waiting for its partner
    assert done == [2] and batcher.calls == 1
    run(3, Cohort(id="01", size=2))
    incomplete.join(timeout=10)
    assert sorted(done) == [1, 2, 3] and batcher.calls == 2


def test_head_goes_without_a_member_that_never_comes():
    batcher = HeadBatcher(lambda h: h, cohort_wait_s=0.05)
    t0 = time.monotonic()
    out, nxt = batcher.step_logits(torch.ones(1, 2), Cohort(id="ee", size=3), "server-A")
    assert time.monotonic() - t0 < 5  # bounded by the wait, not stuck
    assert torch.equal(out, torch.ones(1, 2)) and nxt is None  # alone: no cohort to hand on
