"""Signed DHT records: only the peer a record's subkey names can write it (corolla.swarm.identity).

Records are built as hivemind's DHTNode builds them before its validators see them (key: the
DHTID bytes; subkey and value: msgpack), then signed and checked by hivemind's own
CompositeValidator with corolla's two validators, as every DHT node runs them.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import stat

import pytest
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.p2p import P2P
from hivemind.p2p.p2p_daemon_bindings.datastructures import PeerID
from hivemind.utils import get_dht_time
from hivemind.utils.serializer import MSGPackSerializer

from corolla.protocol.messages import block_key
from corolla.swarm.dht import ServerInfoValidator
from corolla.swarm.identity import (
    MAX_RECORD_TTL_S,
    Identity,
    SignedRecordValidator,
    load_or_create_identity,
    peer_id_of,
    signed_payload,
)

MODEL = "m"


def _info(start: int = 0, end: int = 4) -> dict:
    return {"state": "online", "start_block": start, "end_block": end, "version": "0", "dtype": "float32",
            "inference_rps": 1.0, "forward_tps": 1.0, "cache_tokens_left": 10}


def _record(owner: str, value=None, key: str = block_key(MODEL, 1), ttl_s: float = 30.0) -> DHTRecord:
    return DHTRecord(key=DHTID.generate(source=key).to_bytes(), subkey=MSGPackSerializer.dumps(owner),
                     value=MSGPackSerializer.dumps(_info() if value is None else value),
                     expiration_time=get_dht_time() + ttl_s)


def _node(identity: Identity | None) -> CompositeValidator:
    """The validators of a corolla DHT node (as start_dht gives them to hivemind)."""
    return CompositeValidator([SignedRecordValidator(identity), ServerInfoValidator({MODEL: 4})])


def _signed(identity: Identity, record: DHTRecord) -> DHTRecord:
    return dataclasses.replace(record, value=_node(identity).sign_value(record))


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def mallory() -> Identity:
    return Identity.generate()


def test_a_record_signed_by_its_owner_is_valid_on_every_node_and_reads_back_plain(alice):
    record = _signed(alice, _record(alice.peer_id))
    for node in (_node(None), _node(Identity.generate()), _node(alice)):
        assert node.validate(record)
        assert MSGPackSerializer.loads(node.strip_value(record)) == _info()


def test_rsa_identities_made_by_hivemind_sign_too(tmp_path):
    P2P.generate_identity(str(tmp_path / "rsa.key"))
    rsa = Identity.load(tmp_path / "rsa.key")
    assert rsa.peer_id == PeerID.from_identity((tmp_path / "rsa.key").read_bytes()).to_base58()
    assert _node(None).validate(_signed(rsa, _record(rsa.peer_id)))


def test_a_peer_cannot_write_under_another_peers_id(alice, mallory):
    """Mallory signs with her key a record under Alice's peer id: her key is not Alice's."""
    forged = _record(alice.peer_id, _info(0, 2))
    signature = mallory.sign(signed_payload(forged, forged.value))  # a true signature, by the wrong key
    assert _node(mallory).sign_value(forged) == forged.value  # her node does not even sign it
    envelope = b"[corolla-sig:%s:%s]" % (base64.b64encode(mallory.public_key), base64.b64encode(signature))
    assert not _node(None).validate(dataclasses.replace(forged, value=forged.value + envelope))
    # her signature made for her own subkey, moved onto Alice's
    own = _signed(mallory, _record(mallory.peer_id, _info(0, 2)))
    assert _node(None).validate(own)
    assert not _node(None).validate(dataclasses.replace(own, subkey=forged.subkey))


@pytest.mark.parametrize("change", ["value", "expiration", "key", "subkey to a reserved one", "unsigned",
                                    "garbage signature", "subkey not a string"])
def test_a_changed_or_unsigned_record_is_refused(alice, change):
    record = _signed(alice, _record(alice.peer_id))
    payload = _node(None).strip_value(record)
    envelope = record.value[len(payload):]
    bad = {
        "value": lambda: dataclasses.replace(record, value=MSGPackSerializer.dumps(_info(0, 3)) + envelope),
        "expiration": lambda: dataclasses.replace(record, expiration_time=record.expiration_time + 60),
        "key": lambda: dataclasses.replace(record, key=DHTID.generate(source=block_key(MODEL, 2)).to_bytes()),
        "subkey to a reserved one": lambda: dataclasses.replace(record, subkey=DHTProtocol.IS_REGULAR_VALUE),
        "unsigned": lambda: dataclasses.replace(record, value=payload),
        "garbage signature": lambda: dataclasses.replace(record, value=payload + b"[corolla-sig:AAAA:AAAA]"),
        "subkey not a string": lambda: dataclasses.replace(record, subkey=MSGPackSerializer.dumps(7)),
    }[change]()
    assert not _node(None).validate(bad)
    assert _node(None).validate(record)  # the record itself was fine


def test_a_record_may_not_claim_to_live_long(alice):
    assert _node(None).validate(_signed(alice, _record(alice.peer_id, ttl_s=MAX_RECORD_TTL_S)))
    assert not _node(None).validate(_signed(alice, _record(alice.peer_id, ttl_s=MAX_RECORD_TTL_S + 3600)))


def test_identity_files_are_created_private_and_give_a_stable_peer_id(tmp_path):
    path = str(tmp_path / "server.key")
    first, file, temporary = load_or_create_identity(path)
    assert (file, temporary) == (path, False)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_identity(path)[0].peer_id == first.peer_id
    assert first.peer_id.startswith("12D3KooW")  # an Ed25519 key: the peer id holds it
    other, file, temporary = load_or_create_identity(None)
    assert temporary and os.path.exists(file) and other.peer_id != first.peer_id
    assert peer_id_of(other.public_key) == other.peer_id
