"""Concurrent generations in one client share LM-head computations; each gets its own rows."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from corolla.client.head_batching import HeadBatcher


def test_each_thread_gets_its_own_rows_and_calls_are_shared():
    weight = torch.randn(50, 8)
    started, release = threading.Event(), threading.Event()

    def logits(hidden):
        started.set()
        release.wait(10)  # the first call is held until the other threads have queued up
        return hidden @ weight.T

    batcher = HeadBatcher(logits)
    inputs = [torch.randn(1 + i % 2, 8) for i in range(6)]
    results: dict[int, torch.Tensor] = {}

    def run(i):
        results[i] = batcher.logits(inputs[i])

    first = threading.Thread(target=run, args=(0,))
    first.start()
    started.wait()
    others = [threading.Thread(target=run, args=(i,)) for i in range(1, 6)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while batcher.waiting < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in [first, *others]:
        t.join(timeout=10)
    for i, x in enumerate(inputs):
        assert torch.allclose(results[i], x @ weight.T, atol=1e-5)
    assert batcher.rows == sum(len(x) for x in inputs)
    assert batcher.calls == 2  # the first alone, then the five that waited, together


def test_a_lone_caller_never_waits_and_errors_reach_every_waiter():
    batcher = HeadBatcher(lambda h: h * 2)
    assert torch.equal(batcher.logits(torch.ones(1, 3)), torch.full((1, 3), 2.0))

    def broken(_):
        raise RuntimeError("head failed")

    with pytest.raises(RuntimeError, match="head failed"):
        HeadBatcher(broken).logits(torch.ones(1, 3))
