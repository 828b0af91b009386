"""Fair limits per peer (corolla.server.limits), alone and in the handlers (driven in-process)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoConfig

from corolla.errors import RateLimitedError, ServerBusyError, TooManyStreamsError
from corolla.models.loading import load_span
from corolla.protocol.messages import InferenceMeta, ResponseMeta, SessionOpen, decode_meta, encode_meta
from corolla.protocol.tensors import to_wire
from corolla.server import limits as limits_module
from corolla.server.config import ServerConfig
from corolla.server.handlers import BlockHandlers
from corolla.server.limits import Limits, PeerLimits
from tests.tiny_models import save_tiny_model
from tests.unit.test_push import _Context, _Peer, _queue_iter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_request_rate_is_a_burst_then_a_steady_rate_per_peer():
    clock = Clock()
    lim = PeerLimits(Limits(requests_per_s=10, request_burst=5), clock=clock)
    for _ in range(5):
        lim.admit("a")
    with pytest.raises(RateLimitedError, match="requests/s"):
        lim.admit("a")
    lim.admit("b")  # another peer has its own bucket
    clock.now += 0.15  # one more request's worth (and a half)
    lim.admit("a")
    with pytest.raises(RateLimitedError):
        lim.admit("a")
    clock.now += 10
    for _ in range(5):  # refilled up to the burst, not beyond
        lim.admit("a")
    with pytest.raises(RateLimitedError):
        lim.admit("a")


def test_byte_rate_per_peer():
    clock = Clock()
    lim = PeerLimits(Limits(bytes_per_s=1000, byte_burst=2000), clock=clock)
    lim.admit("a", 1500)
    with pytest.raises(RateLimitedError, match="MiB/s"):
        lim.admit("a", 1000)
    clock.now += 1
    lim.admit("a", 1000)
    unlimited = PeerLimits(Limits(requests_per_s=0, bytes_per_s=0))
    for _ in range(10_000):
        unlimited.admit("a", 10**9)


def test_open_streams_per_peer():
    lim = PeerLimits(Limits(streams_per_peer=2))
    with lim.stream("a"), lim.stream("a"):
        with pytest.raises(TooManyStreamsError):
            with lim.stream("a"):
                pass
        with lim.stream("b"):
            pass
    with lim.stream("a"), lim.stream("a"):  # slots come back when streams end
        pass


def test_new_peers_share_a_number_of_sessions_and_become_known_by_being_served():
    lim = PeerLimits(Limits(new_peer_sessions=2, known_after_steps=3))
    lim.check_new_session("fresh", 1)
    with pytest.raises(ServerBusyError, match="not served before"):
        lim.check_new_session("fresh", 2)
    for _ in range(3):
        lim.served("regular")
    assert lim.known("regular") and not lim.known("fresh")
    lim.check_new_session("regular", 50)  # a known peer is not held back by the crowd


def test_tracked_peers_are_bounded(monkeypatch):
    monkeypatch.setattr(limits_module, "MAX_TRACKED_PEERS", 8)
    lim = PeerLimits(Limits(requests_per_s=1, request_burst=1))
    with lim.stream("holder"):
        for i in range(100):
            lim.admit(f"p{i}")
        assert len(lim._peers) <= 9
        assert "holder" in lim._peers  # a peer with an open stream is never forgotten


# --- in the handlers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-limits"))


def _handlers(folder, server: dict | None = None, **limits) -> BlockHandlers:
    config = AutoConfig.from_pretrained(folder)
    span = load_span(folder, config, 0, 3, torch.float32)
    return BlockHandlers(model_id="tiny", span=span, start=0, end=3, hidden_size=config.hidden_size,
                         dtype=torch.float32, info=lambda: b"",
                         config=ServerConfig(model=str(folder), peer_limits=Limits(**limits), **(server or {})))


def _step(position: int, session_id: str | None = None) -> runtime_pb2.ExpertRequest:
    opening = SessionOpen(model_id="tiny", session_id=session_id, start_block=0, end_block=3, max_length=64) \
        if session_id else None
    return runtime_pb2.ExpertRequest(uid="tiny", tensors=[to_wire(torch.randn(1, 1, 64))],
                                     metadata=encode_meta(InferenceMeta(position=position, open=opening)))


def _code(response) -> str | None:
    meta = decode_meta(response.metadata, ResponseMeta)
    return meta.error.code if meta.error else None


def test_a_peer_over_its_rate_gets_a_typed_error_and_others_go_on(folder):
    handlers = _handlers(folder, requests_per_s=0.001, request_burst=3)  # (no refill within the test, however slow)

    async def scenario():
        greedy_q, other_q = asyncio.Queue(), asyncio.Queue()
        greedy = handlers.rpc_inference(_queue_iter(greedy_q), _Context(_Peer("greedy")))
        other = handlers.rpc_inference(_queue_iter(other_q), _Context(_Peer("other")))
        codes = []
        for position in range(5):
            greedy_q.put_nowait(_step(position, "greedy-session-1" if position == 0 else None))
            codes.append(_code(await asyncio.wait_for(anext(greedy), 10)))
            if codes[-1]:
                break
        other_q.put_nowait(_step(0, "other-session-01"))
        other_code = _code(await asyncio.wait_for(anext(other), 10))
        for q in (greedy_q, other_q):
            q.put_nowait(None)
        await greedy.aclose()
        await other.aclose()
        return codes, other_code

    codes, other_code = asyncio.run(scenario())
    assert codes == [None, None, None, "RateLimitedError"]
    assert other_code is None
    assert len(handlers.sessions) == 0


def test_streams_per_peer_and_a_silent_stream_is_closed(folder):
    handlers = _handlers(folder, streams_per_peer=2, first_message_s=3.0)

    async def scenario():
        queues = [asyncio.Queue() for _ in range(3)]
        streams = [handlers.rpc_inference(_queue_iter(q), _Context(_Peer("slow"))) for q in queues]
        # two silent streams hold the peer's slots; the third is refused at once
        held = [asyncio.ensure_future(anext(s, None)) for s in streams[:2]]
        await asyncio.sleep(0.1)
        refused = _code(await asyncio.wait_for(anext(streams[2]), 10))
        # the silent ones are ended after first_message_s, with no answer, and free their slots
        ended = await asyncio.wait_for(asyncio.gather(*held), 10)
        again = handlers.rpc_inference(_queue_iter(queues[2]), _Context(_Peer("slow")))
        queues[2].put_nowait(_step(0, "slow-session-001"))
        answered = _code(await asyncio.wait_for(anext(again), 10))
        queues[2].put_nowait(None)
        await again.aclose()
        return refused, ended, answered

    refused, ended, answered = asyncio.run(scenario())
    assert refused == "TooManyStreamsError"
    assert ended == [None, None]
    assert answered is None


def test_fresh_identities_cannot_take_every_session(folder):
    handlers = _handlers(folder, new_peer_sessions=2, known_after_steps=2)

    async def scenario():
        codes, streams = [], []
        # a peer served twice is known; then a crowd of fresh ones, served once each
        for peer, steps in [("regular", 2), ("fresh-1", 1), ("fresh-2", 1), ("fresh-3", 1), ("regular", 1)]:
            q = asyncio.Queue()
            stream = handlers.rpc_inference(_queue_iter(q), _Context(_Peer(peer)))
            for position in range(steps):
                q.put_nowait(_step(position, f"{peer}-{len(streams)}".ljust(8, "x") if position == 0 else None))
                code = _code(await asyncio.wait_for(anext(stream), 10))
            codes.append(code)
            streams.append((q, stream))
        for q, stream in streams:
            q.put_nowait(None)
            await stream.aclose()
        return codes

    codes = asyncio.run(scenario())
    assert codes == [None, None, None, "ServerBusyError", None]
    assert handlers.limits.refused["new_peers"] == 1


@pytest.mark.parametrize("tokens, max_batch_tokens, expected_batches", [(1, 2, 3), (40, 2048, 3)],
                         ids=["known-first", "strangers-capped"])
def test_a_known_peers_step_is_served_before_strangers_work(folder, tokens, max_batch_tokens, expected_batches):
    """While a stranger's step computes, two more strangers queue steps, then a known peer one
    token: the next batch holds the known peer's step first (known-first: a batch fits 2 tokens,
    the strangers queued 2 before it), and at most new_peer_batch_tokens of strangers' work
    (strangers-capped: 40 tokens each, 64 allowed: one stranger per batch, room or not)."""
    import threading

    handlers = _handlers(folder, server={"max_batch_tokens": max_batch_tokens}, known_after_steps=2,
                         new_peer_batch_tokens=64)
    batches: list[list[str]] = []  # the peers of each batch computed
    compute, gate = handlers.batcher._compute, threading.Event()

    def recording(batch):
        batches.append([r.session.peer for r in batch])
        if len(batches) == 3:  # the first stranger's step takes its time: the rest queue meanwhile
            gate.wait(10)
        return compute(batch)

    handlers.batcher._compute = recording

    def step(position, session_id, n):
        opening = SessionOpen(model_id="tiny", session_id=session_id, start_block=0, end_block=3, max_length=256) \
            if position == 0 else None
        return runtime_pb2.ExpertRequest(uid="tiny", tensors=[to_wire(torch.randn(1, n, 64))],
                                         metadata=encode_meta(InferenceMeta(position=position, open=opening)))

    async def scenario():
        regular_q = asyncio.Queue()
        regular = handlers.rpc_inference(_queue_iter(regular_q), _Context(_Peer("regular")))
        for position in range(2):  # served twice: known
            regular_q.put_nowait(step(position, "regular-session", 1))
            assert _code(await asyncio.wait_for(anext(regular), 10)) is None
        streams = []

        async def answer(name, stream):
            assert _code(await asyncio.wait_for(anext(stream), 30)) is None

        async def queued(n):  # wait until n steps wait in the queue (no fixed sleeps: a loaded machine is slow)
            for _ in range(1000):
                if len(handlers.batcher.queue) >= n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{n} steps never queued")

        waits = []
        for i in range(3):
            q = asyncio.Queue()
            stream = handlers.rpc_inference(_queue_iter(q), _Context(_Peer(f"stranger-{i}")))
            q.put_nowait(step(0, f"stranger-session-{i}", tokens))
            streams.append((q, stream))
            waits.append(asyncio.ensure_future(answer(f"stranger-{i}", stream)))
            if i == 0:
                for _ in range(3000):  # until stranger-0's step is computing (held at the gate)
                    if len(batches) >= 3:
                        break
                    await asyncio.sleep(0.01)
            else:
                await queued(i)
        regular_q.put_nowait(step(2, None, 1))
        waits.append(asyncio.ensure_future(answer("regular", regular)))
        await queued(3)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*waits), 30)
        for q, stream in [*streams, (regular_q, regular)]:
            q.put_nowait(None)
            await stream.aclose()

    asyncio.run(scenario())
    assert batches[:3] == [["regular"], ["regular"], ["stranger-0"]]  # regular becomes known; stranger-0 runs
    assert batches[3][0] == "regular"  # first in the next batch, though it came last
    assert len(batches) == 2 + expected_batches
