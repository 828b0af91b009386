"""Signed announcements on real DHT nodes: a hostile peer cannot forge, overwrite or keep alive
another server's records, and expired records are gone.

Three corolla DHT nodes (a bootstrap and two full peers, as ``corolla dht`` and servers start
them) and a hostile peer: a plain hivemind DHT with its own key, whose validator signs whatever it
is asked to store with that key (and so passes its own checks) — the best a stranger can do.
"""

from __future__ import annotations

import base64
import functools
import time

import pytest
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from corolla.protocol.messages import MODELS_KEY, ServerInfo, block_key
from corolla.swarm.announce import announce
from corolla.swarm.dht import start_dht, visible_maddrs
from corolla.swarm.discovery import fetch_models, fetch_swarm_state
from corolla.swarm.identity import Identity, signed_payload

MODEL, NUM_BLOCKS = "signed-model", 4


def _info(start: int, end: int, name: str) -> ServerInfo:
    return ServerInfo.model_validate({
        "state": "online", "start_block": start, "end_block": end, "version": "0", "dtype": "float32",
        "inference_rps": 1.0, "forward_tps": 1.0, "cache_tokens_left": 10, "public_name": name})


class _SignsAnything(RecordValidatorBase):
    """The hostile peer's validator: signs every record with its own key, whatever the subkey."""

    def __init__(self, identity: Identity):
        self.identity = identity

    def validate(self, record: DHTRecord) -> bool:
        return True

    def sign_value(self, record: DHTRecord) -> bytes:
        signature = self.identity.sign(signed_payload(record, record.value))
        return record.value + b"[corolla-sig:%s:%s]" % (base64.b64encode(self.identity.public_key),
                                                       base64.b64encode(signature))


class _SignsNothing(_SignsAnything):
    def sign_value(self, record: DHTRecord) -> bytes:
        return record.value


@pytest.fixture(scope="module")
def nodes():
    boot = start_dht(models={MODEL: NUM_BLOCKS})
    peers = visible_maddrs(boot)
    honest = [boot] + [start_dht(peers, models={MODEL: NUM_BLOCKS}) for _ in range(2)]
    yield honest
    for node in honest:
        node.shutdown()


def _hostile(peers, validator_cls):
    import hivemind

    identity = Identity.generate()
    return hivemind.DHT(initial_peers=peers, start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                        record_validators=[validator_cls(identity)], check_if_identity_free=False), identity


def _wait(predicate, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_forged_record_for_another_server_is_refused_by_every_node(nodes):
    victim = nodes[1]
    victim_id = victim.peer_id.to_base58()
    announce(victim, MODEL, _info(0, 2, "victim"), expiration_s=120)
    for node in nodes:
        _wait(lambda node=node: [s.peer_id for s in fetch_swarm_state(node, MODEL, NUM_BLOCKS).servers] == [victim_id],
              "every node to see the victim's records")

    hostile, hostile_id = None, None
    for validator_cls in (_SignsAnything, _SignsNothing):
        hostile, identity = _hostile(visible_maddrs(nodes[0]), validator_cls)
        try:
            later = get_dht_time() + 300  # newer than the victim's: it would overwrite it, were it valid
            forged = _info(2, 4, "forged").model_dump(mode="json")
            for key in (block_key(MODEL, 0), block_key(MODEL, 2)):
                assert not hostile.store(key, forged, later, subkey=victim_id), validator_cls.__name__
            # the victim's entry in the list of models, claiming another number of blocks
            assert not hostile.store(MODELS_KEY, {"model_id": MODEL, "num_blocks": 9}, later, subkey=victim_id)
            # unsigned or signed by the wrong key, under its own id too, is refused
            if validator_cls is _SignsNothing:
                assert not hostile.store(block_key(MODEL, 0), forged, later, subkey=identity.peer_id)
            hostile_id = identity.peer_id
        finally:
            hostile.shutdown()
    for node in nodes:
        state = fetch_swarm_state(node, MODEL, NUM_BLOCKS)
        assert [(s.peer_id, s.info.public_name, s.start, s.end) for s in state.servers] == \
            [(victim_id, "victim", 0, 2)]
        assert fetch_models(node) == {MODEL: NUM_BLOCKS}
    assert hostile_id is not None


def test_a_server_signs_its_own_records_and_cannot_make_them_outlive_the_limit(nodes):
    server = nodes[2]
    own = server.peer_id.to_base58()
    assert server.store(block_key(MODEL, 3), _info(3, 4, "own").model_dump(mode="json"), get_dht_time() + 60,
                        subkey=own)
    assert not server.store(block_key(MODEL, 3), _info(3, 4, "forever").model_dump(mode="json"),
                            get_dht_time() + 86400, subkey=own)
    _wait(lambda: any(s.info.public_name == "own" for s in fetch_swarm_state(nodes[0], MODEL, NUM_BLOCKS).servers),
          "the server's own record to show")


def test_an_expired_record_is_ignored(nodes):
    server = nodes[2]
    announce(server, MODEL, _info(1, 3, "short-lived"), expiration_s=3)

    def names(node):
        return {s.info.public_name for s in fetch_swarm_state(node, MODEL, NUM_BLOCKS).servers}

    _wait(lambda: all("short-lived" in names(node) for node in nodes), "the short-lived record to show")
    time.sleep(3.5)
    for node in nodes:
        assert "short-lived" not in names(node)


def test_records_read_back_plain_through_the_dht(nodes):
    """What a reader gets is the value as stored, the signature stripped by the validators."""
    writer = nodes[1]
    announce(writer, MODEL, _info(0, 2, "victim"), expiration_s=120)
    got = nodes[0].run_coroutine(functools.partial(_get, key=block_key(MODEL, 0)))
    assert ServerInfo.model_validate(got[writer.peer_id.to_base58()]).public_name == "victim"


async def _get(dht, node, *, key):
    found = await node.get(key, latest=True)
    return {subkey: v.value for subkey, v in found.value.items()}

