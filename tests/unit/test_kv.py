"""KV caches that grow with their sessions, and the byte budget they are counted against."""

from __future__ import annotations

import torch

from corolla.models.kv import KVLayout
from corolla.server.kv import GROW_ALIGN, CacheBudget, SessionKV

LAYOUT = KVLayout(blocks=4, kv_heads=2, head_dim=8, dtype=torch.float32)


def test_token_bytes_count_keys_and_values_of_every_block():
    assert LAYOUT.token_bytes == 2 * 4 * 2 * 8 * 4
    assert KVLayout(4, 2, 8, torch.bfloat16).token_bytes == LAYOUT.token_bytes // 2


def test_a_sub_span_and_a_batch_scale_the_cost_per_token():
    kv = SessionKV(LAYOUT, first=1, last=3, batch=3, max_length=1000)
    assert kv.token_bytes == LAYOUT.token_bytes // 4 * 2 * 3


def test_capacity_grows_in_aligned_steps_and_never_past_max_length():
    kv = SessionKV(LAYOUT, 0, 4, 1, max_length=1000)
    assert kv.capacity == 0 and kv.nbytes == 0
    assert kv.capacity_for(1) == GROW_ALIGN
    assert kv.capacity_for(GROW_ALIGN + 1) == 2 * GROW_ALIGN
    kv.grow(kv.capacity_for(10), 0)
    assert kv.capacity_for(10) == kv.capacity  # fits: no growth
    assert kv.capacity_for(999) == 1000  # aligned up, but never past max_length
    short = SessionKV(LAYOUT, 0, 4, 1, max_length=20)
    assert short.capacity_for(5) == 20  # a short session never reserves more than its length


def test_growing_keeps_what_was_written_and_append_returns_the_prefix():
    kv = SessionKV(LAYOUT, 0, 4, 1, max_length=1000)
    kv.grow(kv.capacity_for(3), 0)
    k = torch.randn(1, 2, 3, 8)
    v = torch.randn(1, 2, 3, 8)
    keys, values = kv.append(2, k, v, 0)
    assert torch.equal(keys, k) and torch.equal(values, v)
    kv.grow(kv.capacity_for(200), 3)
    assert kv.capacity >= 200
    k2, v2 = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    keys, values = kv.append(2, k2, v2, 3)
    assert torch.equal(keys, torch.cat([k, k2], dim=2)) and torch.equal(values, torch.cat([v, v2], dim=2))
    held = kv.nbytes
    assert held == kv.capacity * kv.token_bytes > 0
    assert kv.free() == held
    assert kv.nbytes == 0 and kv.capacity == 0 and kv.keys[2] is None


def test_budget_takes_only_what_fits_and_gets_it_back():
    budget = CacheBudget(1000)
    assert budget.try_take(600)
    assert not budget.try_take(500)
    assert budget.used == 600 and budget.free == 400
    budget.give_back(600)
    assert budget.try_take(1000) and budget.free == 0
