"""Property-based fuzzing of every decoder of peer input (hypothesis).

What a peer sends is decoded in a few places: request and response metadata (msgpack into
pydantic models), tensors (hivemind's protobuf, in corolla's codecs), a client's adapter tensors,
DHT records (the signature envelope, server and model records) and what the client reads back out
of them. Each either returns a valid object or raises a :class:`~corolla.errors.BadRequestError`
(a bool for validators); no other exception, whatever the bytes. Structured inputs are generated
from the real messages' fields so the search reaches past the msgpack parser into the validators.
"""

from __future__ import annotations

import msgpack
import pytest
import torch
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.proto import runtime_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corolla.client.remote import parse_response
from corolla.errors import BadRequestError, CorollaError
from corolla.models.adapters import unpack
from corolla.protocol.codecs import CODECS
from corolla.protocol.messages import (
    AdapterSpec,
    BackwardMeta,
    ForwardMeta,
    InferenceMeta,
    PushMeta,
    ResponseMeta,
    ServerInfo,
    decode_meta,
    encode_meta,
)
from corolla.protocol.tensors import MAX_TENSOR_ELEMENTS, decode, from_wire
from corolla.swarm.dht import ServerInfoValidator
from corolla.swarm.discovery import parse_models, parse_swarm_state
from corolla.swarm.identity import Identity, SignedRecordValidator

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METAS = [InferenceMeta, PushMeta, ForwardMeta, BackwardMeta, ResponseMeta, ServerInfo, AdapterSpec]

# msgpack-able values, nested, with the strings and numbers that make validators work
_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


def _fields(model) -> list[str]:
    names = set()
    for cls in (model, *METAS):
        names.update(cls.model_fields)
    return sorted(names) + ["session_id", "peer_id", "model_id", "start_block", "end_block", "max_length", "id"]


def _near_valid(model):
    """Maps keyed by real field names (of this message and the others), with random values, some
    of them taken from a valid message of the same kind."""
    keys = st.sampled_from(_fields(model)) | st.text(max_size=10)
    return st.dictionaries(keys, _values, max_size=8)


def _valid_sample(model) -> dict:
    return {
        InferenceMeta: {"position": 3, "step": 4, "compression": "fp16", "push_from": "12D3KooWPeer"},
        PushMeta: {"session_id": "s" * 16, "position": 2, "step": 7},
        ForwardMeta: {"model_id": "m", "start_block": 0, "end_block": 2},
        BackwardMeta: {"model_id": "m", "start_block": 0, "end_block": 2, "compression": "int8"},
        ResponseMeta: {"position": 1, "pushed": True, "step": 2},
        ServerInfo: {"state": "online", "start_block": 0, "end_block": 2, "version": "0", "dtype": "float32",
                     "inference_rps": 1.0, "forward_tps": 1.0, "cache_tokens_left": 1},
        AdapterSpec: {"lora_rank": 2, "lora_targets": ["q"], "lora_scale": 1.0},
    }[model]


def _decodes_or_refuses(data: bytes, model):
    try:
        decoded = decode_meta(data, model)
    except BadRequestError:
        return None
    assert isinstance(decoded, model)
    # a decoded message encodes and decodes to itself (what the server passes on is what it read)
    assert decode_meta(encode_meta(decoded), model) == decoded
    return decoded


@pytest.mark.parametrize("model", METAS, ids=lambda m: m.__name__)
@FUZZ
@given(data=st.binary(max_size=300))
def test_metadata_from_arbitrary_bytes(model, data):
    _decodes_or_refuses(data, model)


@pytest.mark.parametrize("model", METAS, ids=lambda m: m.__name__)
@FUZZ
@given(extra=st.data())
def test_metadata_from_near_valid_maps(model, extra):
    base = dict(_valid_sample(model))
    assert _decodes_or_refuses(msgpack.packb(base, use_bin_type=True), model) is not None  # the sample is valid
    changes = extra.draw(_near_valid(model))
    dropped = extra.draw(st.lists(st.sampled_from(sorted(base)), max_size=2))
    mutated = {k: v for k, v in {**base, **changes}.items() if k not in dropped}
    _decodes_or_refuses(msgpack.packb(mutated, use_bin_type=True), model)


_dtypes = st.sampled_from(["float32", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
                           "float64", "complex64", "", "nonsense"])


@st.composite
def _wire_tensors(draw):
    proto = runtime_pb2.Tensor(
        buffer=draw(st.binary(max_size=256)),
        size=draw(st.lists(st.integers(min_value=0, max_value=2**32 - 1) | st.integers(0, 8), max_size=4)),
        dtype=draw(_dtypes),
        compression=draw(st.sampled_from(list(runtime_pb2.CompressionType.values()))),
        requires_grad=draw(st.booleans()),
    )
    return proto


@FUZZ
@given(proto=_wire_tensors())
def test_tensors_from_arbitrary_protobufs(proto):
    try:
        tensor = from_wire(proto)
    except BadRequestError:
        return
    assert isinstance(tensor, torch.Tensor) and tensor.numel() <= MAX_TENSOR_ELEMENTS
    assert list(tensor.shape) == list(proto.size)


@FUZZ
@given(protos=st.lists(_wire_tensors(), max_size=3), codec=st.sampled_from([*CODECS, None, "zip"]))
def test_hidden_states_in_every_codec(protos, codec):
    try:
        decode(protos, codec)
    except BadRequestError:
        pass


@FUZZ
@given(rank=st.integers(0, 80), targets=st.lists(st.sampled_from(["q", "k", "v", "o", "x"]), max_size=3),
       prompt_len=st.integers(0, 3), shapes=st.lists(st.lists(st.integers(0, 6), max_size=3), max_size=6),
       finite=st.booleans())
def test_adapter_tensors(rank, targets, prompt_len, shapes, finite):
    try:
        spec = AdapterSpec.model_validate({"lora_rank": rank, "lora_targets": targets, "prompt_len": prompt_len})
    except Exception:
        return  # refused at the metadata step (covered above)
    tensors = [torch.full(s, 0.5 if finite else float("nan")) for s in shapes]
    try:
        unpack(spec, tensors, lora_shape=lambda t: (8, 8), hidden_size=8, first=0, last=1, batch=1, max_rank=64)
    except BadRequestError:
        pass


@FUZZ
@given(metadata=st.binary(max_size=120), protos=st.lists(_wire_tensors(), max_size=2),
       codec=st.sampled_from([*CODECS, None]))
def test_client_reading_a_servers_answer(metadata, protos, codec):
    """A hostile server's answer is an error of corolla's own types on the client, nothing else."""
    try:
        parse_response(runtime_pb2.ExpertResponse(metadata=metadata, tensors=protos), codec)
    except CorollaError:
        pass


_identity = Identity.generate()


@FUZZ
@given(key=st.binary(max_size=24), subkey=st.binary(max_size=60), value=st.binary(max_size=200),
       expiration=st.floats(allow_nan=True, allow_infinity=True), sign=st.booleans())
def test_dht_record_validators(key, subkey, value, expiration, sign):
    node = CompositeValidator([SignedRecordValidator(None), ServerInfoValidator({"m": 4})])
    record = DHTRecord(key=key, subkey=subkey, value=value, expiration_time=expiration)
    if sign:  # give the signature check something to pass so the value check runs too
        signer = SignedRecordValidator(_identity)
        record = DHTRecord(key=DHTID.generate(source="m.1").to_bytes(),
                           subkey=msgpack.packb(_identity.peer_id), value=value, expiration_time=1.0)
        record = DHTRecord(record.key, record.subkey, signer.sign_value(record), record.expiration_time)
    assert node.validate(record) in (True, False)
    node.strip_value(record)


@FUZZ
@given(raw=st.dictionaries(st.text(max_size=8) | st.integers(0, 4).map(lambda b: f"m.{b}"),
                           st.dictionaries(st.text(max_size=12) | st.integers(), _values, max_size=3) | _values,
                           max_size=6))
def test_reading_the_swarm_out_of_dht_values(raw):
    state = parse_swarm_state("m", 4, raw)
    for server in state.servers:
        assert 0 <= server.start < server.end <= 4
    models = parse_models(raw.get("m.0") if isinstance(raw.get("m.0"), dict) else None)
    assert all(isinstance(n, int) and n > 0 for n in models.values())
