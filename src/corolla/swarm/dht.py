"""Starting a hivemind DHT node for a corolla peer (server, client or bootstrap)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Mapping, Sequence

from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer

from corolla.protocol.messages import MODELS_KEY, ModelRecord, ServerInfo, block_key
from corolla.swarm.identity import SignedRecordValidator, load_or_create_identity
from corolla.swarm.relay import (
    RELAY_START_ATTEMPTS,
    _static_relays,
    check_relay,
    public_maddr,
    serves_as_relay,
)

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0  # p2pd is slow to start on a busy 2-core machine


_MODELS_KEY_ID = DHTID.generate(source=MODELS_KEY).to_bytes()


class ServerInfoValidator(RecordValidatorBase):
    """Refuses block records whose value is not a valid ServerInfo, and records of the swarm's
    list of models (:data:`~corolla.protocol.messages.MODELS_KEY`) that are not a valid
    ModelRecord under a server's peer id (whose signature SignedRecordValidator checks first).

    hivemind hands validators only the DHTID (a hash) of a key, so ``models`` (model id ->
    number of blocks) says which block keys to guard; other keys pass through (the list of models
    has one well-known key: every node guards it). Readers parse every record again anyway (see
    discovery), so a node that guards nothing is still safe.
    """

    def __init__(self, models: Mapping[str, int] | None = None):
        super().__init__()
        self._block_keys: dict[bytes, str] = {
            DHTID.generate(source=block_key(model_id, block)).to_bytes(): block_key(model_id, block)
            for model_id, num_blocks in (models or {}).items()
            for block in range(num_blocks)
        }

    def validate(self, record: DHTRecord) -> bool:
        if record.key == _MODELS_KEY_ID:
            return _valid_model_record(record)
        key = self._block_keys.get(record.key)
        if key is None:
            return True  # not a block key of a model this node guards
        if record.subkey in DHTProtocol.RESERVED_SUBKEYS:
            return False  # a block record must be keyed per server (no subkey arrives as b"\xc0")
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
            ServerInfo.model_validate(MSGPackSerializer.loads(record.value))
        except Exception:
            log.debug("rejected an invalid ServerInfo record under %s", key)
            return False
        return isinstance(subkey, str)


def _valid_model_record(record: DHTRecord) -> bool:
    """A ModelRecord stored under its server's peer id (the subkey; its signature is checked by
    :class:`~corolla.swarm.identity.SignedRecordValidator`)."""
    if record.subkey in DHTProtocol.RESERVED_SUBKEYS:
        return False
    try:
        subkey = MSGPackSerializer.loads(record.subkey)
        ModelRecord.model_validate(MSGPackSerializer.loads(record.value))
    except Exception:
        log.debug("rejected an invalid record under %s", MODELS_KEY)
        return False
    return isinstance(subkey, str)


def start_dht(
    initial_peers: Sequence[str] = (),
    *,
    client_mode: bool = False,
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    announce_maddrs: Sequence[str] | None = None,
    identity_path: str | None = None,
    models: Mapping[str, int] | None = None,
    use_relay: bool = False,
    relays: Sequence[str] = (),
):
    """Start a DHT node in a background process; raise if it cannot reach ``initial_peers``.

    ``use_relay``: this node accepts no inbound connection (NAT, firewall), so it reserves a slot on
    a libp2p circuit relay and announces its address through it (``/p2p-circuit``): ``relays``, by
    default the initial peers. Every peer reaches relayed peers (``use_relay``, hivemind's default),
    and a full peer with a public address relays for them: see :mod:`corolla.swarm.relay` for how
    it makes sure its relay keeps their reservations and does not cut their connections short.

    Every node has an identity (``identity_path``, a libp2p key file, created there if missing; a
    temporary one otherwise): its peer id, and the key that signs what it stores. Every node
    refuses records not signed by the peer their subkey names (:mod:`corolla.swarm.identity`).

    ``models`` (model id -> number of blocks): the models whose block records this node guards;
    the node remembers them (:func:`dht_models`), so that a server announcing through it also
    lists its model under ``corolla.models`` with the right number of blocks.
    """
    start = functools.partial(_start_dht, initial_peers, client_mode=client_mode, host_maddrs=host_maddrs,
                              announce_maddrs=announce_maddrs, identity_path=identity_path, models=models,
                              use_relay=use_relay, relays=relays)
    if not serves_as_relay(host_maddrs, announce_maddrs, client_mode=client_mode, use_relay=use_relay):
        return start()
    for attempt in range(1, RELAY_START_ATTEMPTS + 1):
        dht = start(force_reachability="public")
        relay = next((m for m in visible_maddrs(dht) if "/p2p-circuit" not in m and public_maddr(m)), None)
        if relay is None or check_relay(relay) is not False:  # None: could not tell (logged); start anyway
            return dht
        if attempt == RELAY_START_ATTEMPTS:
            log.warning("relayed connections through this peer are cut after 128 KiB (p2pd's default relay "
                        "answered %d starts in a row): servers behind NAT should relay through another peer",
                        attempt)
            return dht
        log.info("p2pd's default relay (128 KiB per connection) answered instead of the configured one; "
                 "starting the p2p daemon again (%d/%d)", attempt, RELAY_START_ATTEMPTS)
        dht.shutdown()


def _start_dht(initial_peers, *, client_mode, host_maddrs, announce_maddrs, identity_path, models, use_relay,
               relays, force_reachability: str | None = None):
    import hivemind

    identity, identity_file, temporary = load_or_create_identity(identity_path)
    relay_kwargs = {}
    if use_relay:
        relay_kwargs = dict(use_auto_relay=True, force_reachability="private",
                            trusted_relays=list(relays or initial_peers))
    elif force_reachability:
        relay_kwargs = dict(force_reachability=force_reachability)
    with _static_relays(use_relay):
        dht = hivemind.DHT(
            initial_peers=list(initial_peers),
            start=True,
            client_mode=client_mode,
            host_maddrs=list(host_maddrs),
            announce_maddrs=list(announce_maddrs) if announce_maddrs else None,
            identity_path=identity_file,
            record_validators=[SignedRecordValidator(identity), ServerInfoValidator(models)],
            startup_timeout=STARTUP_TIMEOUT_S,
            check_if_identity_free=False,
            num_workers=2,
            **relay_kwargs,
        )
    if temporary:  # p2pd has read it
        shutil.rmtree(os.path.dirname(identity_file), ignore_errors=True)
    dht.corolla_models = dict(models or {})
    return dht


def dht_models(dht) -> dict[str, int]:
    """The models (id -> number of blocks) ``dht`` was started for by :func:`start_dht`; empty otherwise."""
    return dict(getattr(dht, "corolla_models", None) or {})


def visible_maddrs(dht) -> list[str]:
    """The multiaddrs others can use as ``--initial-peers`` to join through this node."""
    return [str(addr) for addr in dht.get_visible_maddrs()]
