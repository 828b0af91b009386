"""Malformed and hostile requests get a clear typed error; everyone else keeps being served."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from hivemind.proto import runtime_pb2

from corolla.client.remote import parse_response
from corolla.errors import BadRequestError, SequenceTooLongError, UnknownSessionError
from corolla.protocol.messages import ForwardMeta, InferenceMeta, SessionOpen, encode_meta
from corolla.protocol.rpc import NAMESPACE, BlockRPC, stub_for
from corolla.protocol.tensors import to_wire
from tests.swarm.conftest import local_greedy


def _hidden(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def _open(model_id, start=0, end=6, max_length=64, session_id="s" * 16):
    return SessionOpen(model_id=model_id, session_id=session_id, start_block=start, end_block=end,
                       max_length=max_length)


class RawCaller:
    """Sends hand-built requests to one server, the way a buggy or hostile peer would."""

    def __init__(self, model):
        self.client = model.client
        self.peer = model.client.plan()[0].peer_id

    def inference(self, *messages: runtime_pb2.ExpertRequest):
        async def call():
            async def requests():
                for m in messages:
                    yield m

            stream = await stub_for(self.client.p2p, self.peer).rpc_inference(requests())
            responses = []
            for _ in messages:  # one answer per message, or stop at the first error
                responses.append(await anext(stream))
                if b"error" in responses[-1].metadata:
                    break
            await stream.aclose()
            return responses

        return self.client.loop.run(call(), timeout=60)

    def forward(self, request: runtime_pb2.ExpertRequest):
        return self.client.loop.run(stub_for(self.client.p2p, self.peer).rpc_forward(request, timeout=30), timeout=60)

    def raw_bytes(self, method: str, payload: bytes) -> None:
        async def call():
            handle = BlockRPC._get_handle_name(NAMESPACE, method)
            _, reader, writer = await self.client.p2p.call_binary_stream_handler(
                __import__("hivemind").p2p.PeerID.from_base58(self.peer), handle)
            try:
                writer.write(payload)
                await writer.drain()
                await asyncio.wait_for(reader.read(1024), 10)
            except (TimeoutError, ConnectionError):
                pass  # the server may hang up on garbage: that is fine, it must just keep serving others
            finally:
                writer.close()

        self.client.loop.run(call(), timeout=60)


def step(model_id, hidden, position=0, open_=True, **open_kw):
    meta = InferenceMeta(position=position, open=_open(model_id, **open_kw) if open_ else None)
    return runtime_pb2.ExpertRequest(uid=model_id, tensors=[to_wire(hidden)], metadata=encode_meta(meta))


@pytest.fixture
def raw(tiny_swarm):
    with tiny_swarm.client(0) as model:
        yield RawCaller(model), tiny_swarm.model_id


def _error_of(responses):
    assert len(responses) >= 1
    with pytest.raises(Exception) as info:
        for r in responses:
            parse_response(r)
    return info.value


def test_wrong_hidden_size(raw):
    caller, mid = raw
    err = _error_of(caller.inference(step(mid, _hidden(1, 1, 63))))
    assert isinstance(err, BadRequestError) and "hidden size must be 64" in str(err)


def test_wrong_rank_and_dtype(raw):
    caller, mid = raw
    err = _error_of(caller.inference(step(mid, _hidden(1, 64))))
    assert isinstance(err, BadRequestError) and "shape" in str(err)
    err = _error_of(caller.inference(step(mid, torch.ones(1, 1, 64, dtype=torch.int64))))
    assert isinstance(err, BadRequestError) and "float32" in str(err)


def test_nan_hidden_states(raw):
    caller, mid = raw
    err = _error_of(caller.inference(step(mid, torch.full((1, 1, 64), float("nan")))))
    assert isinstance(err, BadRequestError) and "NaN" in str(err)


def test_unknown_session(raw):
    caller, mid = raw
    err = _error_of(caller.inference(step(mid, _hidden(1, 1, 64), open_=False)))
    assert isinstance(err, UnknownSessionError)


def test_position_mismatch(raw):
    caller, mid = raw
    err = _error_of(caller.inference(step(mid, _hidden(1, 2, 64), position=5)))
    assert isinstance(err, BadRequestError) and "position" in str(err)


def test_past_the_servers_length_limit(raw):
    caller, mid = raw
    # the servers of the test swarm allow 256 tokens per session
    err = _error_of(caller.inference(step(mid, _hidden(1, 1, 64), max_length=100_000)))
    assert isinstance(err, SequenceTooLongError) and "256" in str(err)
    # and growing past the session's own max_length
    first = step(mid, _hidden(1, 6, 64), max_length=8)
    second = step(mid, _hidden(1, 3, 64), position=6, open_=False)
    responses = caller.inference(first, second)
    parse_response(responses[0])
    with pytest.raises(SequenceTooLongError):
        parse_response(responses[1])


def test_blocks_outside_the_servers_span(raw):
    caller, mid = raw
    err = _error_of(caller.inference(step(mid, _hidden(1, 1, 64), start=0, end=7)))
    assert isinstance(err, BadRequestError)
    err = _error_of(caller.inference(step("someone-else", _hidden(1, 1, 64))))
    assert isinstance(err, BadRequestError) and "serves" in str(err)


def test_garbage_metadata_and_tensor_bytes(raw):
    caller, mid = raw
    bad_meta = runtime_pb2.ExpertRequest(uid=mid, tensors=[to_wire(_hidden(1, 1, 64))], metadata=b"\xc1\xff\x00junk")
    assert isinstance(_error_of(caller.inference(bad_meta)), BadRequestError)
    tensor = to_wire(_hidden(1, 1, 64))
    tensor.buffer = b"\x01\x02\x03"  # 3 bytes cannot be 64 float32s
    bad_tensor = runtime_pb2.ExpertRequest(
        uid=mid, tensors=[tensor], metadata=encode_meta(InferenceMeta(position=0, open=_open(mid))))
    assert isinstance(_error_of(caller.inference(bad_tensor)), BadRequestError)
    fwd = runtime_pb2.ExpertRequest(uid=mid, tensors=[tensor],
                                    metadata=encode_meta(ForwardMeta(model_id=mid, start_block=0, end_block=6)))
    assert isinstance(_error_of([caller.forward(fwd)]), BadRequestError)
    # bytes that are not even a protobuf frame
    caller.raw_bytes("rpc_inference", b"\xff" * 64)
    caller.raw_bytes("rpc_forward", b"\x00\x01garbage" * 10)


def test_bad_clients_do_not_disturb_a_good_one(tiny_swarm):
    """A well-behaved client generates while another floods the same server with bad requests."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_swarm.folder).eval()
    ids = torch.randint(0, 320, (1, 10), generator=torch.Generator().manual_seed(11))
    expected = local_greedy(ref, ids, 40)
    stop = threading.Event()
    bad_requests, hostile_errors = [], []

    def hostile():
        with tiny_swarm.client(0) as model:
            caller, mid = RawCaller(model), tiny_swarm.model_id
            while not stop.is_set() and len(bad_requests) < 200:
                try:
                    caller.inference(step(mid, _hidden(2, 3, 17)))
                    caller.inference(step(mid, _hidden(1, 1, 64), open_=False))
                    caller.raw_bytes("rpc_inference", b"\xfe" * 32)
                except Exception as e:  # the hostile side's own transport hiccups are not under test
                    hostile_errors.append(e)
                bad_requests.append(1)

    thread = threading.Thread(target=hostile)
    thread.start()
    try:
        with tiny_swarm.client(0) as model:
            out = model.generate(ids, max_new_tokens=40, eos_token_id=[])
    finally:
        stop.set()
        thread.join(120)
    assert bad_requests, "the hostile client never got a request through"
    assert torch.equal(out, expected)
