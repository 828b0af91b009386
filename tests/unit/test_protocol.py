"""Wire types: strict models, msgpack metadata and tensors that turn any garbage into BadRequestError."""

from __future__ import annotations

import msgpack
import pytest
import torch
from hivemind.proto import runtime_pb2
from pydantic import ValidationError

from corolla.errors import BadRequestError
from corolla.protocol.messages import (
    MAX_META_BYTES,
    PROTOCOL_VERSION,
    ErrorInfo,
    ForwardMeta,
    InferenceMeta,
    PushMeta,
    ResponseMeta,
    ServerInfo,
    ServerState,
    SessionOpen,
    block_key,
    decode_meta,
    encode_meta,
)
from corolla.protocol.tensors import MAX_TENSOR_ELEMENTS, from_wire, to_wire

INFO = dict(
    state="online",
    start_block=0,
    end_block=4,
    version="0.1.0",
    dtype="float16",
    inference_rps=10.0,
    forward_tps=500.0,
    cache_tokens_left=1024,
)
OPEN = dict(model_id="org.model-v1_2", session_id="sess-0001", start_block=2, end_block=5, max_length=128)


# --- models: frozen, extra-forbidding ----------------------------------------------------------------
@pytest.mark.parametrize(
    "model, fields",
    [
        (ServerInfo, INFO),
        (SessionOpen, OPEN),
        (InferenceMeta, {"position": 3}),
        (ForwardMeta, {"model_id": "m", "start_block": 0, "end_block": 1}),
        (ErrorInfo, {"code": "BadRequestError", "message": "no"}),
        (ResponseMeta, {"position": 1}),
    ],
)
def test_models_are_frozen_and_forbid_extra_fields(model, fields):
    obj = model(**fields)
    first = next(iter(fields))
    with pytest.raises(ValidationError):
        setattr(obj, first, fields[first])
    with pytest.raises(ValidationError, match="extra"):
        model(**fields, sneaky=1)


def test_server_info_defaults_and_types():
    info = ServerInfo(**INFO)
    assert info.state is ServerState.ONLINE
    assert info.protocol == PROTOCOL_VERSION
    assert info.quant == "none" and info.active_sessions == 0
    assert info.public_name is None and info.next_pings == {}


@pytest.mark.parametrize("span", [(3, 3), (4, 2)])
def test_server_info_rejects_empty_spans(span):
    with pytest.raises(ValidationError, match="empty span"):
        ServerInfo(**{**INFO, "start_block": span[0], "end_block": span[1]})


@pytest.mark.parametrize("span", [(3, 3), (4, 2)])
def test_session_open_rejects_empty_spans(span):
    with pytest.raises(ValidationError, match="empty span"):
        SessionOpen(**{**OPEN, "start_block": span[0], "end_block": span[1]})


@pytest.mark.parametrize(
    "field, value",
    [
        ("start_block", -1),
        ("end_block", 100_001),
        ("inference_rps", -0.5),
        ("cache_tokens_left", -1),
        ("active_sessions", -1),
        ("version", "v" * 33),
        ("dtype", "x" * 17),
        ("public_name", "n" * 65),
        ("next_pings", {f"p{i}": 0.1 for i in range(65)}),
        ("next_pings", {"p" * 65: 0.1}),
        ("state", "sleeping"),
    ],
)
def test_server_info_rejects_out_of_range_fields(field, value):
    with pytest.raises(ValidationError):
        ServerInfo(**{**INFO, field: value})


def test_server_info_survives_the_dht_round_trip():
    info = ServerInfo(**INFO, public_name="bob", next_pings={"peerB": 0.012}, active_sessions=2)
    wire = msgpack.unpackb(msgpack.packb(info.model_dump(mode="json")), raw=False)
    assert ServerInfo.model_validate(wire) == info


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_id", ""),
        ("model_id", "../etc/passwd"),
        ("model_id", "-starts-with-dash"),
        ("model_id", "m\n"),
        ("model_id", "x" * 129),
        ("session_id", "short"),
        ("session_id", "has space!"),
        ("session_id", "s" * 65),
        ("max_length", 0),
        ("max_length", 1_000_001),
    ],
)
def test_session_open_rejects_bad_fields(field, value):
    with pytest.raises(ValidationError):
        SessionOpen(**{**OPEN, field: value})


# --- encode_meta / decode_meta --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "meta",
    [
        InferenceMeta(position=0, open=SessionOpen(**OPEN)),
        InferenceMeta(position=17),
        ForwardMeta(model_id="m", start_block=1, end_block=3),
        ResponseMeta(error=ErrorInfo(code="ServerBusyError", message="full, try another server")),
        ResponseMeta(position=42),
        ResponseMeta(),
    ],
)
def test_meta_round_trip(meta):
    data = encode_meta(meta)
    assert isinstance(data, bytes)
    assert decode_meta(data, type(meta)) == meta


def test_encode_meta_is_plain_msgpack_without_nones():
    raw = msgpack.unpackb(encode_meta(InferenceMeta(position=5)), raw=False)
    assert raw == {"position": 5}


def test_empty_metadata_is_an_empty_map():
    assert decode_meta(b"", ResponseMeta) == ResponseMeta()
    with pytest.raises(BadRequestError, match="InferenceMeta"):
        decode_meta(b"", InferenceMeta)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc1", id="reserved byte"),
        pytest.param(b"\x92\x01", id="truncated array"),
        pytest.param(b"\x81\xa3abc", id="truncated map"),
        pytest.param(msgpack.packb({"position": 1}) + b"\x00", id="trailing data"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="array declaring 4G items"),
        pytest.param(b"\xdb\xff\xff\xff\xff", id="string declaring 4 GiB"),
        pytest.param(b"\x91" * 5000 + b"\xc0", id="deep nesting"),
        pytest.param(msgpack.packb({1: 2}), id="int map key"),
        pytest.param(b"\xa2\xff\xfe", id="invalid utf-8"),
    ],
)
def test_garbage_bytes_are_a_bad_request(data):
    with pytest.raises(BadRequestError, match="not valid msgpack"):
        decode_meta(data, InferenceMeta)


def test_bytes_map_keys_are_a_bad_request():
    # msgpack lets bytes keys through strict_map_key; the model still refuses them
    with pytest.raises(BadRequestError, match="invalid InferenceMeta"):
        decode_meta(b"\x82\xa8position\x01\xc4\x01k\x01", InferenceMeta)


@pytest.mark.parametrize("value", [[1, 2], 7, "position", None, True, b"\x00\x01", 1.5])
def test_non_map_metadata_is_a_bad_request(value):
    with pytest.raises(BadRequestError, match="must be a map"):
        decode_meta(msgpack.packb(value, use_bin_type=True), InferenceMeta)


def test_oversize_metadata_is_refused_before_decoding():
    big = msgpack.packb({"position": 1, "pad": "x" * MAX_META_BYTES})
    assert len(big) > MAX_META_BYTES
    with pytest.raises(BadRequestError, match="limit"):
        decode_meta(big, InferenceMeta)


def test_metadata_at_the_limit_is_decoded():
    # exactly MAX_META_BYTES of valid msgpack is allowed; the model then refuses the extra field
    pad = "x" * (MAX_META_BYTES - 20)
    data = msgpack.packb({"position": 1, "p": pad})
    data = msgpack.packb({"position": 1, "p": "x" * (len(pad) + MAX_META_BYTES - len(data))})
    assert len(data) == MAX_META_BYTES
    with pytest.raises(BadRequestError, match="invalid InferenceMeta"):
        decode_meta(data, InferenceMeta)


@pytest.mark.parametrize(
    "raw, model, where",
    [
        ({"position": -1}, InferenceMeta, "position"),
        ({"position": "1x"}, InferenceMeta, "position"),
        ({"position": 1, "extra": 0}, InferenceMeta, "extra"),
        ({"position": 0, "open": {**OPEN, "max_length": 0}}, InferenceMeta, "open.max_length"),
        ({"position": 0, "open": {**OPEN, "start_block": 5}}, InferenceMeta, "open"),
        ({"model_id": "m", "start_block": 0}, ForwardMeta, "end_block"),
        ({"error": {"code": "X", "message": "m" * 5000}}, ResponseMeta, "error.message"),
    ],
)
def test_invalid_fields_are_a_bad_request_naming_the_field(raw, model, where):
    with pytest.raises(BadRequestError, match=f"invalid {model.__name__}") as e:
        decode_meta(msgpack.packb(raw), model)
    assert where in str(e.value)


def test_bad_request_message_is_short_even_with_many_errors():
    raw = {f"extra{i}": i for i in range(200)}
    with pytest.raises(BadRequestError) as e:
        decode_meta(msgpack.packb(raw), ForwardMeta)
    assert len(str(e.value)) < 1000


# --- block keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["m", "llama-3.1-8b", "Qwen2.5-0.5B-Instruct", "org.model_v1.2"])
@pytest.mark.parametrize("block", [0, 7, 123])
def test_block_key(model_id, block):
    assert block_key(model_id, block) == f"{model_id}.{block}"


# --- tensors -----------------------------------------------------------------------------------------------
def _proto(buffer: bytes, size, dtype="float32", compression=runtime_pb2.CompressionType.NONE, **kw):
    return runtime_pb2.Tensor(buffer=buffer, size=size, dtype=dtype, compression=compression, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_tensor_round_trip(dtype):
    t = (torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7).to(dtype)
    back = from_wire(to_wire(t))
    assert back.dtype == dtype
    assert back.shape == t.shape
    assert torch.equal(back, t)


def test_tensor_round_trip_with_float16_compression():
    t = torch.linspace(-2, 2, 30).reshape(1, 5, 6)
    back = from_wire(to_wire(t, runtime_pb2.CompressionType.FLOAT16))
    assert back.shape == t.shape
    assert back.dtype == torch.float32
    assert (back - t).abs().max().item() < 2e-3


def test_tensor_round_trip_through_serialized_bytes():
    t = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(0))
    proto = runtime_pb2.Tensor.FromString(to_wire(t).SerializeToString())
    assert torch.equal(from_wire(proto), t)


def test_to_wire_detaches_tensors_that_need_grad():
    t = torch.ones(2, 2, requires_grad=True) * 3
    assert torch.equal(from_wire(to_wire(t)), torch.full((2, 2), 3.0))


@pytest.mark.parametrize(
    "proto",
    [
        pytest.param(_proto(b"xyz", [1]), id="buffer not a multiple of the item size"),
        pytest.param(_proto(b"\x00" * 4, [2, 2]), id="buffer too short"),
        pytest.param(_proto(b"\x00" * 64, [2, 2]), id="buffer too long"),
        pytest.param(_proto(b"\x00" * 8, [], dtype="float32"), id="scalar with two items"),
        pytest.param(_proto(b"\x00" * 16, [4], dtype="no-such-dtype"), id="unknown dtype"),
        pytest.param(_proto(b"\x00" * 16, [2], dtype="object"), id="object dtype"),
        pytest.param(_proto(b"\x00" * 16, [4], compression=99), id="unknown compression"),
        pytest.param(_proto(b"\x01\x02\x03", [4], compression=runtime_pb2.CompressionType.FLOAT16), id="fp16 garbage"),
        pytest.param(_proto(b"\x00" * 7, [2, 2], dtype="bfloat16"), id="bfloat16 garbage"),
        pytest.param(
            _proto(b"\x01" * 16, [2], dtype="int64", requires_grad=True), id="requires grad on integers"
        ),
    ],
)
def test_garbage_tensors_are_a_bad_request(proto):
    with pytest.raises(BadRequestError):
        from_wire(proto)


def test_protobuf_itself_refuses_negative_dimensions():
    # size is uint32 in the schema, so a negative dimension cannot even be set
    with pytest.raises(ValueError):
        runtime_pb2.Tensor(size=[2, -1])


def test_negative_dimension_sent_on_the_wire_is_refused():
    # a hostile peer writes -1 as a 10-byte varint into field 2 (size); it parses as 2**32 - 1
    wire = b"\x12\x0b" + b"\x02" + b"\xff" * 9 + b"\x01" + b"\x22\x07float32"
    proto = runtime_pb2.Tensor.FromString(wire)
    assert list(proto.size) == [2, 2**32 - 1]
    with pytest.raises(BadRequestError, match="too large"):
        from_wire(proto)


@pytest.mark.parametrize(
    "size",
    [[MAX_TENSOR_ELEMENTS + 1], [2**16, 2**16], [2**32 - 1] * 8, [1024, 1024, 1024]],
)
def test_huge_declared_sizes_are_refused_before_allocating(size):
    with pytest.raises(BadRequestError, match="too large"):
        from_wire(_proto(b"\x00" * 16, size))


def test_largest_allowed_size_is_not_refused_for_its_size():
    # MAX_TENSOR_ELEMENTS declared with a tiny buffer: passes the size check, fails the decode
    with pytest.raises(BadRequestError, match="could not decode"):
        from_wire(_proto(b"\x00" * 16, [MAX_TENSOR_ELEMENTS]))


def test_zero_sized_tensor_decodes():
    t = from_wire(_proto(b"", [0, 4]))
    assert list(t.shape) == [0, 4]


# --- codecs of hidden states ------------------------------------------------------------------------
from corolla.protocol.codecs import CODECS  # noqa: E402
from corolla.protocol.tensors import decode, encode  # noqa: E402


@pytest.mark.parametrize("codec,tolerance,ratio", [("none", 0.0, 1.0), ("fp16", 1e-3, 0.5), ("bf16", 8e-3, 0.5),
                                                   ("int8", 8e-3, 0.3)])
def test_codecs_round_trip_within_their_precision_and_size(codec, tolerance, ratio):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 64) * torch.logspace(-2, 2, 64)  # rows with very different scales
    wire = encode(hidden, codec)
    back = decode(wire, codec)
    assert back.dtype == torch.float32 and back.shape == hidden.shape
    rel = ((back - hidden).abs() / hidden.abs().amax(dim=-1, keepdim=True)).max().item()
    assert rel <= tolerance
    size = sum(len(t.buffer) for t in wire)
    assert size <= ratio * hidden.numel() * 4 + 64


def test_every_codec_is_covered():
    assert set(CODECS) == {"none", "fp16", "bf16", "int8"}


def test_codecs_are_spelled_once():
    """Messages, the client's config and the CLI's choices all take their codecs from protocol.codecs."""
    import argparse

    from corolla.cli.common import add_compression
    from corolla.client.config import ClientConfig

    for codec in CODECS:
        assert ForwardMeta(model_id="m", start_block=0, end_block=1, compression=codec).compression == codec
        assert ClientConfig(compression=codec).compression == codec
    with pytest.raises(BadRequestError):
        raw = {"model_id": "m", "start_block": 0, "end_block": 1, "compression": "zstd"}
        decode_meta(msgpack.packb(raw), ForwardMeta)
    with pytest.raises(ValueError):
        ClientConfig(compression="zstd")
    parser = argparse.ArgumentParser()
    add_compression(parser)
    (action,) = [a for a in parser._actions if a.dest == "compression"]
    assert tuple(action.choices) == CODECS


@pytest.mark.parametrize("codec", ["none", "bf16", "int8"])
def test_malformed_codec_payloads_are_bad_requests(codec):
    hidden = torch.randn(1, 3, 8)
    wrong_count = encode(hidden, "int8")[:1] if codec == "int8" else encode(hidden, "int8")
    with pytest.raises(BadRequestError, match="tensor"):
        decode(wrong_count, codec)
    if codec == "bf16":
        with pytest.raises(BadRequestError, match="int16"):
            decode(encode(hidden, "none"), "bf16")
    if codec == "int8":
        values, _ = encode(hidden, "int8")
        with pytest.raises(BadRequestError, match="float32 scales|do not match"):
            decode([values, encode(torch.ones(1, 2, 1), "none")[0]], "int8")
    with pytest.raises(BadRequestError, match="unknown codec"):
        decode(encode(hidden), "zstd")


# --- transport failures ------------------------------------------------------------------------------
def test_remote_call_turns_transport_failures_into_remote_call_errors():
    from corolla.errors import RemoteCallError, SessionClosedError
    from corolla.protocol.rpc import StreamClosedError, remote_call

    with pytest.raises(RemoteCallError, match="^call to peer failed: StreamClosedError: gone$") as info:
        with remote_call("call to peer"):
            raise StreamClosedError("gone")
    assert isinstance(info.value.__cause__, StreamClosedError)
    with pytest.raises(SessionClosedError):  # not a transport failure: unchanged
        with remote_call("call to peer"):
            raise SessionClosedError("closed")


def test_a_peer_no_connection_could_be_made_to_is_unreachable():
    """The daemon's dial failures (what p2pd answers for a dead peer's stale address, and its backoff
    after one) are PeerUnreachableError; other daemon errors stay plain RemoteCallErrors."""
    from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure

    from corolla.errors import PeerUnreachableError, RemoteCallError
    from corolla.protocol.rpc import remote_call

    for message in ("failed to dial 12D3KooWA: all dials failed\n  * [/ip4/127.0.0.1/tcp/39091] dial backoff",
                    "failed to dial: failed to dial 12D3KooWA: all dials failed\n  * [/ip4/127.0.0.1/tcp/1] "
                    "dial tcp4 127.0.0.1:1: connect: connection refused"):
        with pytest.raises(PeerUnreachableError, match="^call to peer failed: ControlFailure"):
            with remote_call("call to peer"):
                raise ControlFailure(f"Connect failed. msg={message}")
    with pytest.raises(RemoteCallError) as info:
        with remote_call("call to peer"):
            raise ControlFailure("Connect failed. msg=stream reset")
    assert not isinstance(info.value, PeerUnreachableError)


def test_truncate_to_and_step_are_validated():
    route = [{"peer_id": "Qm1", "session_id": "abcdefgh"}]
    ok = decode_meta(encode_meta(InferenceMeta(position=4, truncate_to=4, step=9, route=route)), InferenceMeta)
    assert (ok.truncate_to, ok.step, len(ok.route)) == (4, 9, 1)  # a rolling-back step is pushed on too
    pushed = decode_meta(encode_meta(PushMeta(session_id="abcdefgh", position=4, truncate_to=4, step=9)), PushMeta)
    assert (pushed.truncate_to, pushed.step) == (4, 9)
    for bad in ({"position": 4, "truncate_to": -1}, {"position": 4, "truncate_to": 3}, {"position": 4, "step": -1},
                {"position": 4, "step": 2**63}, {"position": 4, "step": 1.5}):
        with pytest.raises(BadRequestError):
            decode_meta(msgpack.packb(bad), InferenceMeta)
        with pytest.raises(BadRequestError):
            decode_meta(msgpack.packb({**bad, "session_id": "abcdefgh"}), PushMeta)


def test_open_only_carries_an_opening_and_nothing_else():
    opening = {"model_id": "m", "session_id": "abcdefgh", "start_block": 0, "end_block": 2, "max_length": 8}
    ok = decode_meta(msgpack.packb({"position": 0, "open": opening, "open_only": True, "push_from": "Qm1"}),
                     InferenceMeta)
    assert ok.open_only and ok.push_from == "Qm1"
    adapter = {"prompt_len": 2}
    for bad in ({"position": 0, "open_only": True}, {"position": 3, "open": opening, "open_only": True},
                {"position": 0, "open": opening, "open_only": True, "step": 1},
                {"position": 0, "open": opening, "open_only": True, "truncate_to": 0},
                {"position": 0, "open": opening, "open_only": True,
                 "route": [{"peer_id": "Qm1", "session_id": "abcdefgh"}]},
                {"position": 0, "open": {**opening, "adapter": adapter}, "open_only": True}):
        with pytest.raises(BadRequestError):
            decode_meta(msgpack.packb(bad), InferenceMeta)
