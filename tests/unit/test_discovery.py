"""Discovery trusts nothing: invalid DHT records (block records and the list of models) are dropped, by the
reader and by the DHT validator."""

from __future__ import annotations

import msgpack
import pytest
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from corolla.protocol.messages import MAX_MODEL_BLOCKS, MODELS_KEY, ModelRecord, ServerInfo, block_key
from corolla.swarm.dht import ServerInfoValidator
from corolla.swarm.discovery import MAX_MODELS, ServerRecord, SwarmState, parse_models, parse_swarm_state

MODEL = "m"


def info(start: int, end: int, *, state: str = "online", **extra) -> dict:
    """A ServerInfo as it travels in the DHT (plain JSON-able dict)."""
    value = ServerInfo(
        state=state,
        start_block=start,
        end_block=end,
        version="0.1.0",
        dtype="bfloat16",
        inference_rps=12.5,
        forward_tps=300.0,
        cache_tokens_left=8192,
    ).model_dump(mode="json")
    value.update(extra)
    return value


def announce(raw: dict, peer_id: str, value: dict, blocks=None, model_id: str = MODEL) -> dict:
    """Put ``value`` under each of ``blocks`` (default: every block of its span), like announce() does."""
    blocks = range(value["start_block"], value["end_block"]) if blocks is None else blocks
    for b in blocks:
        raw.setdefault(block_key(model_id, b), {})[peer_id] = value
    return raw


def peers(state: SwarmState) -> list[str]:
    return [s.peer_id for s in state.servers]


def test_valid_records_are_kept_and_parsed():
    raw = announce({}, "a", info(0, 4))
    st = parse_swarm_state(MODEL, 8, raw)
    assert st.model_id == MODEL and st.num_blocks == 8
    assert len(st.servers) == 1
    rec = st.servers[0]
    assert rec.peer_id == "a"
    assert isinstance(rec.info, ServerInfo)
    assert (rec.start, rec.end) == (0, 4)
    assert rec.info.inference_rps == 12.5 and rec.info.dtype == "bfloat16"


def test_servers_are_sorted_by_peer_id_whatever_the_dht_order():
    raw = {}
    for peer, (a, b) in [("zeta", (0, 2)), ("mid", (0, 4)), ("Alpha", (2, 6)), ("alpha", (4, 8))]:
        announce(raw, peer, info(a, b))
    st = parse_swarm_state(MODEL, 8, raw)
    assert peers(st) == ["Alpha", "alpha", "mid", "zeta"]


def test_empty_dht_gives_an_empty_swarm():
    st = parse_swarm_state(MODEL, 4, {})
    assert st.servers == ()
    assert st.coverage() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(info(0, 4, surprise=1), id="extra field"),
        pytest.param(info(0, 4, start_block="zero"), id="wrong type start"),
        pytest.param(info(0, 4, inference_rps="fast"), id="wrong type rps"),
        pytest.param({**info(0, 4), "state": "napping"}, id="unknown state"),
        pytest.param(info(0, 4, cache_tokens_left=-1), id="negative cache"),
        pytest.param({k: v for k, v in info(0, 4).items() if k != "dtype"}, id="missing field"),
        pytest.param(None, id="none"),
        pytest.param([0, 4], id="list"),
        pytest.param("online", id="string"),
        pytest.param(b"\x80", id="bytes"),
    ],
)
def test_invalid_records_are_dropped(bad):
    raw = announce({}, "good", info(0, 4))
    announce(raw, "bad", bad, blocks=range(0, 4))
    st = parse_swarm_state(MODEL, 4, raw)
    assert peers(st) == ["good"]


def test_record_whose_span_does_not_contain_its_block_is_dropped():
    raw = announce({}, "good", info(0, 8))
    announce(raw, "liar", info(0, 2), blocks=[5])  # says it holds 0:2, announced under block 5
    assert peers(parse_swarm_state(MODEL, 8, raw)) == ["good"]


def test_one_bad_record_drops_the_peer_even_if_other_blocks_are_fine():
    raw = announce({}, "a", info(0, 4))
    raw[block_key(MODEL, 2)]["a"] = info(0, 4, surprise=True)
    assert peers(parse_swarm_state(MODEL, 4, raw)) == []


def test_bad_record_first_then_good_ones_still_drops_the_peer():
    raw = announce({}, "a", info(0, 4))
    raw[block_key(MODEL, 0)]["a"] = {**info(0, 4), "state": "napping"}
    assert peers(parse_swarm_state(MODEL, 4, raw)) == []


def test_span_ending_past_the_model_is_dropped():
    raw = announce({}, "a", info(2, 6), blocks=[2, 3])
    announce(raw, "b", info(0, 4))
    assert peers(parse_swarm_state(MODEL, 4, raw)) == ["b"]


def test_non_string_peer_ids_are_ignored():
    raw = announce({}, "a", info(0, 2))
    raw[block_key(MODEL, 0)][b"raw-bytes"] = info(0, 2)
    raw[block_key(MODEL, 1)][7] = info(0, 2)
    assert peers(parse_swarm_state(MODEL, 2, raw)) == ["a"]


def test_records_of_other_models_and_other_keys_are_ignored():
    raw = announce({}, "a", info(0, 2))
    announce(raw, "other", info(0, 2), model_id="other-model")
    raw["unrelated"] = {"x": info(0, 2)}
    raw[block_key(MODEL, 5)] = {"far": info(5, 6)}  # past num_blocks: never read
    assert peers(parse_swarm_state(MODEL, 2, raw)) == ["a"]


def test_empty_or_none_block_entries_are_tolerated():
    raw = announce({}, "a", info(1, 2))
    raw[block_key(MODEL, 0)] = None
    assert peers(parse_swarm_state(MODEL, 2, raw)) == ["a"]


def test_a_server_announcing_only_some_blocks_is_kept_with_its_span():
    raw = announce({}, "a", info(0, 4), blocks=[1])
    st = parse_swarm_state(MODEL, 4, raw)
    assert [(s.peer_id, s.start, s.end) for s in st.servers] == [("a", 0, 4)]


def test_joining_and_offline_servers_are_kept_but_not_counted_online():
    raw = announce({}, "a", info(0, 2, state="joining"))
    announce(raw, "b", info(1, 3, state="offline"))
    announce(raw, "c", info(2, 4))
    st = parse_swarm_state(MODEL, 4, raw)
    assert peers(st) == ["a", "b", "c"]
    assert st.coverage() == [0, 0, 1, 1]
    assert st.coverage(online_only=False) == [1, 2, 2, 1]


# --- coverage ------------------------------------------------------------------------------------------
def _record(peer: str, start: int, end: int, state: str = "online") -> ServerRecord:
    return ServerRecord(peer, ServerInfo.model_validate(info(start, end, state=state)))


def test_coverage_counts_servers_per_block():
    st = SwarmState(MODEL, 6, (_record("a", 0, 3), _record("b", 2, 6), _record("c", 2, 3)))
    assert st.coverage() == [1, 1, 3, 1, 1, 1]


def test_coverage_clips_spans_past_the_model():
    st = SwarmState(MODEL, 3, (_record("a", 1, 10),))
    assert st.coverage() == [0, 1, 1]


def test_coverage_online_only_flag():
    st = SwarmState(MODEL, 2, (_record("a", 0, 2, "joining"), _record("b", 0, 1, "offline"), _record("c", 1, 2)))
    assert st.coverage() == [0, 1]
    assert st.coverage(online_only=True) == [0, 1]
    assert st.coverage(online_only=False) == [2, 2]


def test_server_record_exposes_its_span():
    rec = _record("a", 3, 7)
    assert (rec.start, rec.end) == (3, 7)


# --- the DHT record validator ---------------------------------------------------------------------------
# Records are built exactly as hivemind's DHTNode.store_many / DHTProtocol build them before calling
# validate(): the key is the DHTID (a SHA-1 of the msgpack'ed key string), subkey and value are
# MSGPackSerializer dumps, and a record stored without a subkey carries DHTProtocol.IS_REGULAR_VALUE.
NUM_BLOCKS = 8
_NO_SUBKEY = object()


def make_validator() -> ServerInfoValidator:
    return ServerInfoValidator({MODEL: NUM_BLOCKS})


def dht_record(key: str, value, subkey=_NO_SUBKEY, *, raw_value: bytes | None = None) -> DHTRecord:
    return DHTRecord(
        key=DHTID.generate(source=key).to_bytes(),
        subkey=DHTProtocol.IS_REGULAR_VALUE if subkey is _NO_SUBKEY else MSGPackSerializer.dumps(subkey),
        value=MSGPackSerializer.dumps(value) if raw_value is None else raw_value,
        expiration_time=1e12,
    )


def test_hivemind_hands_validators_a_hash_of_the_key_not_the_key():
    # the premise of every validator test: the raw key string is not recoverable from record.key
    rec = dht_record(block_key(MODEL, 3), info(0, 4), "peerA")
    assert len(rec.key) == 20
    assert rec.key != msgpack.packb(block_key(MODEL, 3))
    assert rec.key == DHTID.generate(source=msgpack.packb(block_key(MODEL, 3), use_bin_type=True)).to_bytes()
    assert MSGPackSerializer.loads(rec.subkey) == "peerA"


@pytest.mark.parametrize("block", [0, 3, NUM_BLOCKS - 1])
def test_validator_accepts_valid_server_info_under_a_block_key(block):
    value = info(0, NUM_BLOCKS, public_name="alice", next_pings={"peerB": 0.01})
    assert make_validator().validate(dht_record(block_key(MODEL, block), value, "QmPeerA"))


@pytest.mark.parametrize(
    "key, value",
    [
        ("some_other_key", {"anything": [1, 2, 3]}),
        ("m", "not a server info"),
        ("m.blocks", None),
        ("_hivemind.averaging", b"\x00\x01"),
    ],
)
def test_validator_passes_unrelated_keys(key, value):
    v = make_validator()
    assert v.validate(dht_record(key, value, "sub"))
    assert v.validate(dht_record(key, value))


def test_validator_passes_records_whose_key_is_not_a_dht_id():
    v = make_validator()
    assert v.validate(DHTRecord(b"\xc1\xc1", b"\xc0", b"\xc1", 1e12))
    assert v.validate(DHTRecord(b"", b"", b"", 1e12))


@pytest.mark.parametrize(
    "value, raw",
    [
        pytest.param(info(0, 4, surprise=1), None, id="extra field"),
        pytest.param({**info(0, 4), "end_block": 0}, None, id="empty span"),
        pytest.param({**info(0, 4), "state": "napping"}, None, id="unknown state"),
        pytest.param([1, 2], None, id="not a map"),
        pytest.param(None, b"\xc1\xc1\xc1", id="garbage bytes"),
    ],
)
def test_validator_rejects_invalid_server_info_under_a_block_key(value, raw):
    assert not make_validator().validate(dht_record(block_key(MODEL, 2), value, "QmPeerA", raw_value=raw))


def test_validator_rejects_block_records_without_subkey():
    assert not make_validator().validate(dht_record(block_key(MODEL, 2), info(0, 4)))


# ---- the swarm's list of models (corolla.models) ----------------------------------------------------
def model_value(model_id: str, num_blocks: int, **extra) -> dict:
    return {**ModelRecord(model_id=model_id, num_blocks=num_blocks).model_dump(mode="json"), **extra}


def test_models_are_listed_by_id_with_their_blocks():
    """One record per server (subkey: its peer id); where servers disagree, most of them win."""
    raw = {"peerZ": model_value("zeta", 30), "peerA": model_value("alpha", 24), "peerB": model_value("alpha", 24),
           "peerC": model_value("alpha", 99)}
    assert list(parse_models(raw).items()) == [("alpha", 24), ("zeta", 30)]
    assert parse_models(None) == {} and parse_models({}) == {}


@pytest.mark.parametrize(
    "subkey, value",
    [
        pytest.param("a", model_value("a", 4, surprise=1), id="extra field"),
        pytest.param("a", {"model_id": "a", "num_blocks": 0}, id="no blocks"),
        pytest.param("a", {"model_id": "a", "num_blocks": MAX_MODEL_BLOCKS + 1}, id="too many blocks"),
        pytest.param("a/b", {"model_id": "a/b", "num_blocks": 4}, id="not a model id"),
        pytest.param("a", {"model_id": "a"}, id="missing field"),
        pytest.param("a", [1, 2], id="not a map"),
        pytest.param(7, model_value("a", 4), id="subkey not a string"),
    ],
)
def test_invalid_model_records_are_dropped(subkey, value):
    assert parse_models({subkey: value, "ok": model_value("ok", 2)}) == {"ok": 2}


def test_a_flood_of_models_is_cut_at_the_limit():
    raw = {f"peer{i}": model_value(f"m{i:04d}", 2) for i in range(MAX_MODELS + 10)}
    assert list(parse_models(raw)) == [f"m{i:04d}" for i in range(MAX_MODELS)]


def test_complete_means_every_block_has_an_online_server():
    assert SwarmState(MODEL, 4, (_record("a", 0, 2), _record("b", 2, 4))).complete
    assert not SwarmState(MODEL, 4, (_record("a", 0, 2), _record("b", 2, 4, state="joining"))).complete
    assert not SwarmState(MODEL, 4, ()).complete


def test_validator_guards_the_list_of_models_on_every_node():
    v = ServerInfoValidator()  # guards no model's blocks, and still the list of models
    assert v.validate(dht_record(MODELS_KEY, model_value("m", 8), "QmPeer"))
    assert not v.validate(dht_record(MODELS_KEY, model_value("m", 8), 7))
    assert not v.validate(dht_record(MODELS_KEY, model_value("m", 8, surprise=1), "m"))
    assert not v.validate(dht_record(MODELS_KEY, {"model_id": "m", "num_blocks": -1}, "m"))
    assert not v.validate(dht_record(MODELS_KEY, model_value("m", 8)))  # no subkey
    assert not v.validate(dht_record(MODELS_KEY, None, "m", raw_value=b"\xc1\xc1"))


def test_announce_lists_the_model_with_its_blocks():
    """What announce() stores, without a DHT: the block records and the model's record, same expiration."""
    from corolla.swarm.announce import announce

    class Recorder:
        corolla_models = {MODEL: NUM_BLOCKS}

        def run_coroutine(self, coro, return_future=False):
            self.kwargs = coro.keywords
            return None

    dht = Recorder()
    announce(dht, MODEL, ServerInfo.model_validate(info(2, 4)), expiration_s=30)
    keys, values = dht.kwargs["keys"], dht.kwargs["values"]  # each under the server's peer id (its signature)
    assert keys == [block_key(MODEL, 2), block_key(MODEL, 3), MODELS_KEY]
    assert values[-1] == {"model_id": MODEL, "num_blocks": NUM_BLOCKS} and values[0]["start_block"] == 2
    announce(dht, MODEL, ServerInfo.model_validate(info(2, 4)), expiration_s=30, num_blocks=5)
    assert dht.kwargs["values"][-1]["num_blocks"] == 5
    dht.corolla_models = {}  # a node started without the model: its blocks only
    announce(dht, MODEL, ServerInfo.model_validate(info(2, 4)), expiration_s=30)
    assert dht.kwargs["keys"] == [block_key(MODEL, 2), block_key(MODEL, 3)]
