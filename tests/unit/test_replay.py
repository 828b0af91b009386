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


def test_a_link_whose_push_connection_failed_is_not_asked_to_push_again():
    """Hop 0 reports its push to hop 1 lost: later steps name no route past hop 0 (the client
    relays to hop 1), while hop 1 still pushes on to hop 2; a refusal changes nothing."""
    from types import SimpleNamespace

    from corolla.client.config import ClientConfig
    from corolla.client.hopstream import HopStream
    from corolla.client.session import InferenceSession, _HopState
    from corolla.protocol.messages import ErrorInfo
    from corolla.swarm.routing import Hop

    client = SimpleNamespace(config=ClientConfig(), model_id="m")
    session = InferenceSession(client, max_length=64)
    session._hops = [_HopState(HopStream(client, Hop(p, i, i + 1), 64)) for i, p in enumerate("ABC")]
    for state in session._hops:
        state.stream._open_sent = True
    peers = lambda route: [t.peer_id for t in route]  # noqa: E731
    assert peers(session._push_route(0)[0]) == ["B", "C"]

    session._push_failed(0, ErrorInfo(code="UnknownSessionError", message="no open session"))
    assert peers(session._push_route(0)[0]) == ["B", "C"]
    session._push_failed(0, ErrorInfo(code="RemoteCallError", message="push stream to B closed"))
    assert session._push_route(0)[0] == ()
    assert peers(session._push_route(1)[0]) == ["C"] and session._push_route(1)[1] == "A"
    assert session.push_failures == 2


def test_cut_steps_keeps_exactly_the_first_tokens():
    from corolla.client.session import cut_steps

    inputs = [torch.randn(1, 5, 4), torch.randn(1, 1, 4), torch.randn(1, 3, 4)]
    for length in range(10):
        kept = cut_steps(inputs, length)
        joined = torch.cat(kept, 1) if kept else torch.empty(1, 0, 4)
        assert torch.equal(joined, torch.cat(inputs, 1)[:, :length])
    assert cut_steps(inputs, 6)[:2] == inputs[:2] and len(cut_steps(inputs, 6)) == 2
