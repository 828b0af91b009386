"""How a client replays a session into a replacement server: kept steps merged into chunks."""

from __future__ import annotations

import torch

from corolla.client.session import merge_steps


def steps(*lengths: int, batch: int = 1) -> list[torch.Tensor]:
    start = 0
    out = []
    for n in lengths:
        out.append(torch.arange(start, start + n, dtype=torch.float32).reshape(1, n, 1).expand(batch, n, 3))
        start += n
    return out


def test_decode_steps_join_the_chunk_before_them_up_to_the_limit():
    merged = merge_steps(steps(5, 1, 1, 1, 1, 1, 1), max_tokens=8)
    assert [m.shape[1] for m in merged] == [8, 3]
    assert torch.equal(torch.cat(merged, dim=1), torch.cat(steps(5, 1, 1, 1, 1, 1, 1), dim=1))  # order kept


def test_an_input_bigger_than_the_limit_stays_alone_and_batch_rows_count():
    assert [m.shape[1] for m in merge_steps(steps(10, 1, 1), max_tokens=8)] == [10, 2]
    assert [m.shape[1] for m in merge_steps(steps(2, 1, 1, 1, batch=4), max_tokens=8)] == [2, 2, 1]


def test_nothing_to_replay():
    assert merge_steps([], max_tokens=8) == []
