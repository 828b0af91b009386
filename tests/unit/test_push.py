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
        return self.outcome


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
