"""Server-to-server push, in one process: who may push, what is accepted, duplicates dropped.

The handlers are driven directly (no network): the client's stream is a queue of requests and
the pushing server's stream another.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoConfig

from corolla.models.loading import load_span
from corolla.protocol.messages import (
    ErrorInfo,
    InferenceMeta,
    PushMeta,
    PushTarget,
    ResponseMeta,
    SessionOpen,
    decode_meta,
    encode_meta,
)
from corolla.protocol.tensors import to_wire
from corolla.server.config import ServerConfig
from corolla.server.handlers import BlockHandlers
from tests.tiny_models import save_tiny_model

CLIENT, PREVIOUS, STRANGER = "12D3KooWClient", "12D3KooWPrevious", "12D3KooWStranger"


@dataclasses.dataclass
class _Peer:
    name: str

    def to_base58(self) -> str:
        return self.name


@dataclasses.dataclass
class _Context:
    remote_id: _Peer


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-push"))
    config = AutoConfig.from_pretrained(folder)
    span = load_span(folder, config, 0, 3, torch.float32)
    return BlockHandlers(
        model_id="tiny", span=span, start=0, end=3, hidden_size=config.hidden_size, dtype=torch.float32,
        config=ServerConfig(model=str(folder)), info=lambda: b"",
    )


def _request(meta, hidden: torch.Tensor) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(uid="tiny", tensors=[to_wire(hidden)], metadata=encode_meta(meta))


async def _queue_iter(queue: asyncio.Queue):
    while (item := await queue.get()) is not None:
        yield item


def _meta(response: runtime_pb2.ExpertResponse) -> ResponseMeta:
    return decode_meta(response.metadata, ResponseMeta)


def test_pushes_are_taken_only_from_the_named_peer_and_for_the_next_step(handlers):
    h = [torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    prompt = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(9))
    opening = SessionOpen(model_id="tiny", session_id="session-push-1", start_block=0, end_block=3, max_length=32)

    async def scenario():
        client_q: asyncio.Queue = asyncio.Queue()
        stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))

        async def push(sender: str, position: int, hidden: torch.Tensor) -> ResponseMeta:
            q: asyncio.Queue = asyncio.Queue()
            q.put_nowait(_request(PushMeta(session_id=opening.session_id, position=position), hidden))
            q.put_nowait(None)
            return [_meta(r) async for r in handlers.rpc_push(_queue_iter(q), _Context(_Peer(sender)))][0]

        # the client opens the session and names the previous hop
        client_q.put_nowait(_request(InferenceMeta(position=0, open=opening, push_from=PREVIOUS), prompt))
        first = await anext(stream)
        assert _meta(first).position == 3

        refused = await push(STRANGER, 3, h[0])
        assert refused.error is not None and refused.error.code == "BadRequestError"
        wrong_step = await push(PREVIOUS, 5, h[0])
        assert wrong_step.error is not None and "position" in wrong_step.error.message
        unknown = PushMeta(session_id="no-such-session", position=3)
        q: asyncio.Queue = asyncio.Queue()
        q.put_nowait(_request(unknown, h[0]))
        q.put_nowait(None)
        [gone] = [_meta(r) async for r in handlers.rpc_push(_queue_iter(q), _Context(_Peer(PREVIOUS)))]
        assert gone.error is not None and gone.error.code == "UnknownSessionError"

        accepted = await push(PREVIOUS, 3, h[0])
        assert accepted.error is None
        pushed_step = await anext(stream)  # computed from the push, answered to the client
        assert _meta(pushed_step).position == 4
        # the client's own copy of that step arrives late: dropped, no second answer
        client_q.put_nowait(_request(InferenceMeta(position=3, push_from=PREVIOUS), h[0]))
        client_q.put_nowait(_request(InferenceMeta(position=4, push_from=PREVIOUS), h[1]))
        after = await anext(stream)
        assert _meta(after).position == 5
        client_q.put_nowait(None)
        assert [r async for r in stream] == []
        return [first, pushed_step, after]

    responses = asyncio.run(scenario())
    # the same inputs sent by the client alone give the same outputs
    expected = []
    with torch.inference_mode():
        cache = handlers.span.new_cache()
        for position, x in ((0, prompt), (3, h[0]), (4, h[1])):
            expected.append(handlers.span(x, cache, position))
    from corolla.protocol.tensors import from_wire

    for response, want in zip(responses, expected):
        assert torch.allclose(from_wire(response.tensors[0]), want, atol=1e-6)


class _Links:
    """Stands in for the server's PushLinks: each push raises or answers what it is given."""

    def __init__(self, outcome):
        self.outcome = outcome

    async def push(self, peer_id, request, timeout_s):
        if isinstance(self.outcome, BaseException):
            raise self.outcome

        async def ack():
            return self.outcome

        return ack()


@pytest.mark.parametrize("outcome, code", [
    (ConnectionError("push stream to the next peer closed"), "RemoteCallError"),
    (TimeoutError(), "RemoteCallError"),
    (ResponseMeta(error=ErrorInfo(code="UnknownSessionError", message="no open session")), "UnknownSessionError"),
])
def test_a_failed_push_is_reported_to_the_client_with_why(handlers, outcome, code):
    """The client then sends the step to the next hop itself; a lost connection (not a refusal)
    tells it that link should not carry this session's steps again."""
    opening = SessionOpen(model_id="tiny", session_id=f"session-pushfail-{code}", start_block=0, end_block=3,
                          max_length=32)
    route = (PushTarget(peer_id="12D3KooWNext", session_id="next-session-1"),)
    prompt = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(3))

    async def scenario():
        saved, handlers.pushes = handlers.pushes, _Links(outcome)
        try:
            client_q: asyncio.Queue = asyncio.Queue()
            stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))
            client_q.put_nowait(_request(InferenceMeta(position=0, open=opening, route=route), prompt))
            answer = _meta(await anext(stream))
            client_q.put_nowait(None)
            assert [r async for r in stream] == []
            return answer
        finally:
            handlers.pushes = saved

    answer = asyncio.run(scenario())
    assert answer.error is None and answer.position == 3  # the step itself succeeded
    assert not answer.pushed
    assert answer.push_error is not None and answer.push_error.code == code


class _HeldLinks:
    """PushLinks whose acknowledgement waits for the test to give it (an outcome or an exception)."""

    def __init__(self):
        self.sent: list[PushMeta] = []
        self.acks: list[asyncio.Future] = []

    async def push(self, peer_id, request, timeout_s):
        self.sent.append(decode_meta(request.metadata, PushMeta))
        ack = asyncio.get_running_loop().create_future()
        self.acks.append(ack)

        async def acknowledged():
            outcome = await ack
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return acknowledged()


def test_a_numbered_step_is_answered_before_its_push_is_acknowledged_and_a_late_failure_is_a_notice(handlers):
    """The client needs a hop's answer as soon as it can have it (waiting for the next hop's
    acknowledgement cost a round trip per step); should the push fail afterwards, the notice
    names the step, and a notice never comes for a push that was taken."""
    opening = SessionOpen(model_id="tiny", session_id="session-late-1", start_block=0, end_block=3, max_length=32)
    route = (PushTarget(peer_id="12D3KooWNext", session_id="next-session-2"),)
    x = [torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(20 + i)) for i in range(3)]

    async def scenario():
        links = _HeldLinks()
        saved, handlers.pushes = handlers.pushes, links
        try:
            client_q: asyncio.Queue = asyncio.Queue()
            stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))
            client_q.put_nowait(_request(InferenceMeta(position=0, open=opening, route=route, step=1), x[0]))
            first = _meta(await asyncio.wait_for(anext(stream), 10))  # no acknowledgement yet
            assert (first.pushed, first.step, first.push_error, len(links.acks)) == (True, 1, None, 1)
            links.acks[0].set_result(ResponseMeta(position=2))  # taken: no notice

            client_q.put_nowait(_request(InferenceMeta(position=2, route=route, step=2), x[1]))
            second = _meta(await asyncio.wait_for(anext(stream), 10))
            assert (second.pushed, second.step, second.position) == (True, 2, 4)
            links.acks[1].set_exception(ConnectionError("push stream to the next peer closed"))
            notice = await asyncio.wait_for(anext(stream), 10)
            assert not notice.tensors
            notice = _meta(notice)
            assert (notice.notice, notice.step, notice.push_error.code) == (True, 2, "RemoteCallError")

            # a refusal too; and a rolling-back step is pushed with its truncation
            client_q.put_nowait(_request(InferenceMeta(position=3, truncate_to=3, route=route, step=3), x[2]))
            third = _meta(await asyncio.wait_for(anext(stream), 10))
            assert (third.pushed, third.position, links.sent[2].truncate_to, links.sent[2].step) == (True, 5, 3, 3)
            links.acks[2].set_result(ResponseMeta(error=ErrorInfo(code="UnknownSessionError", message="gone")))
            refused = _meta(await asyncio.wait_for(anext(stream), 10))
            assert (refused.notice, refused.step, refused.push_error.code) == (True, 3, "UnknownSessionError")
            client_q.put_nowait(None)
            assert [r async for r in stream] == []
        finally:
            handlers.pushes = saved

    asyncio.run(scenario())


def test_numbered_steps_are_answered_once_whichever_copy_comes_first(handlers):
    """A pushed step and the client's copy of it (sent after a notice, or a retry) are one step;
    numbers tell a rolled-back step from an earlier one at the same position."""
    opening = SessionOpen(model_id="tiny", session_id="session-once-1", start_block=0, end_block=3, max_length=32)
    x = [torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(30 + i)) for i in range(4)]

    async def scenario():
        client_q: asyncio.Queue = asyncio.Queue()
        stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))

        async def push(meta: PushMeta, hidden: torch.Tensor) -> ResponseMeta:
            q: asyncio.Queue = asyncio.Queue()
            q.put_nowait(_request(meta, hidden))
            q.put_nowait(None)
            return [_meta(r) async for r in handlers.rpc_push(_queue_iter(q), _Context(_Peer(PREVIOUS)))][0]

        sid = opening.session_id
        client_q.put_nowait(_request(InferenceMeta(position=0, open=opening, push_from=PREVIOUS, step=1), x[0]))
        assert _meta(await anext(stream)).position == 2
        # step 2 pushed, then the client's copy: one answer
        assert (await push(PushMeta(session_id=sid, position=2, step=2), x[1])).error is None
        assert _meta(await anext(stream)).step == 2
        client_q.put_nowait(_request(InferenceMeta(position=2, push_from=PREVIOUS, step=2), x[1]))
        # step 3 from the client first, then its push: acknowledged, dropped
        client_q.put_nowait(_request(InferenceMeta(position=4, push_from=PREVIOUS, step=3), x[2]))
        third = _meta(await anext(stream))
        assert (third.step, third.position) == (3, 6)
        assert (await push(PushMeta(session_id=sid, position=4, step=3), x[2])).error is None
        # step 4 rolls back to position 4 (same position as step 3) and is pushed: computed, not taken
        # for step 3's duplicate
        assert (await push(PushMeta(session_id=sid, position=4, truncate_to=4, step=4), x[3])).error is None
        fourth = _meta(await anext(stream))
        assert (fourth.step, fourth.position) == (4, 6)
        # a rollback past the session's length is refused at the push
        beyond = await push(PushMeta(session_id=sid, position=7, truncate_to=7, step=5), x[3])
        assert beyond.error is not None and beyond.error.code == "BadRequestError"
        client_q.put_nowait(None)
        assert [r async for r in stream] == []

    asyncio.run(scenario())


def test_a_session_opened_ahead_takes_its_first_step_by_push(handlers):
    """The client opens every hop's session at once (no step, no answer), so the first step can be
    pushed through the chain; an opening that carries tensors is refused with a typed error."""
    opening = SessionOpen(model_id="tiny", session_id="session-ahead-1", start_block=0, end_block=3, max_length=32)
    x = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(41))

    async def scenario():
        client_q: asyncio.Queue = asyncio.Queue()
        stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))
        ahead = InferenceMeta(position=0, open=opening, open_only=True, push_from=PREVIOUS)
        client_q.put_nowait(runtime_pb2.ExpertRequest(uid="tiny", metadata=encode_meta(ahead)))
        answer = asyncio.ensure_future(anext(stream))  # the handler runs (as hivemind drives it)
        for _ in range(100):  # the opening is processed without an answer
            if handlers.sessions.get(opening.session_id) is not None:
                break
            await asyncio.sleep(0.01)
        assert not answer.done()
        q: asyncio.Queue = asyncio.Queue()
        q.put_nowait(_request(PushMeta(session_id=opening.session_id, position=0, step=1), x))
        q.put_nowait(None)
        [ack] = [_meta(r) async for r in handlers.rpc_push(_queue_iter(q), _Context(_Peer(PREVIOUS)))]
        assert ack.error is None
        first = _meta(await asyncio.wait_for(answer, 10))
        assert (first.step, first.position) == (1, 4)
        client_q.put_nowait(None)
        assert [r async for r in stream] == []

        other = SessionOpen(model_id="tiny", session_id="session-ahead-2", start_block=0, end_block=3, max_length=32)
        client_q = asyncio.Queue()
        stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))
        client_q.put_nowait(_request(InferenceMeta(position=0, open=other, open_only=True), x))
        refused = _meta(await asyncio.wait_for(anext(stream), 10))
        client_q.put_nowait(None)
        assert refused.error is not None and refused.error.code == "BadRequestError"
        assert [r async for r in stream] == []
        assert handlers.sessions.get(other.session_id) is None

    asyncio.run(scenario())


def test_a_push_that_comes_before_its_session_opens_waits_for_the_opening(handlers):
    """The client opens the hops' sessions at once, each on its own connection, so the previous
    hop's first push can overtake the opening message: it waits for it instead of being refused
    (the client would then have to send the step itself, a round trip more)."""
    opening = SessionOpen(model_id="tiny", session_id="session-early-push", start_block=0, end_block=3, max_length=32)
    x = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(43))

    async def scenario():
        handlers.config = dataclasses.replace(handlers.config, push_open_wait_s=30.0)  # however slow the machine
        q: asyncio.Queue = asyncio.Queue()
        q.put_nowait(_request(PushMeta(session_id=opening.session_id, position=0, step=1), x))
        q.put_nowait(None)
        acks = asyncio.ensure_future(
            _collect(handlers.rpc_push(_queue_iter(q), _Context(_Peer(PREVIOUS)))))
        await asyncio.sleep(0.2)  # the push is in, its session not open yet
        assert not acks.done()
        client_q: asyncio.Queue = asyncio.Queue()
        stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))
        ahead = InferenceMeta(position=0, open=opening, open_only=True, push_from=PREVIOUS)
        client_q.put_nowait(runtime_pb2.ExpertRequest(uid="tiny", metadata=encode_meta(ahead)))
        first = _meta(await asyncio.wait_for(anext(stream), 10))
        assert (first.step, first.position, first.error) == (1, 2, None)
        [ack] = await asyncio.wait_for(acks, 10)
        assert ack.error is None
        client_q.put_nowait(None)
        assert [r async for r in stream] == []
        assert handlers._opening == {}  # no waiter left behind

    config = handlers.config
    try:
        asyncio.run(scenario())
    finally:
        handlers.config = config


async def _collect(stream) -> list[ResponseMeta]:
    return [_meta(r) async for r in stream]


def test_pushes_queue_while_the_step_before_them_computes(handlers):
    """Prefill pipelining: the previous hop pushes piece after piece; each is taken though the one
    before is still queued or computing (checked against where the queued pushes end), and each is
    answered in order."""
    opening = SessionOpen(model_id="tiny", session_id="session-queued-1", start_block=0, end_block=3, max_length=32)
    pieces = [torch.randn(1, n, 64, generator=torch.Generator().manual_seed(50 + n)) for n in (3, 2, 4)]

    async def scenario():
        client_q: asyncio.Queue = asyncio.Queue()
        stream = handlers.rpc_inference(_queue_iter(client_q), _Context(_Peer(CLIENT)))
        ahead = InferenceMeta(position=0, open=opening, open_only=True, push_from=PREVIOUS)
        client_q.put_nowait(runtime_pb2.ExpertRequest(uid="tiny", metadata=encode_meta(ahead)))
        first = asyncio.ensure_future(anext(stream))
        for _ in range(100):
            if handlers.sessions.get(opening.session_id) is not None:
                break
            await asyncio.sleep(0.01)
        q: asyncio.Queue = asyncio.Queue()
        position = 0
        for step, piece in enumerate(pieces, start=1):
            q.put_nowait(_request(PushMeta(session_id=opening.session_id, position=position, step=step), piece))
            position += piece.shape[1]
        q.put_nowait(None)
        acks = [_meta(r) async for r in handlers.rpc_push(_queue_iter(q), _Context(_Peer(PREVIOUS)))]
        answers = [_meta(await asyncio.wait_for(first, 10))]
        for _ in pieces[1:]:
            answers.append(_meta(await asyncio.wait_for(anext(stream), 10)))
        client_q.put_nowait(None)
        assert [r async for r in stream] == []
        return acks, answers

    acks, answers = asyncio.run(scenario())
    assert [a.error for a in acks] == [None, None, None]
    assert [(a.step, a.position) for a in answers] == [(1, 3), (2, 5), (3, 9)]
