"""Starting a hivemind DHT node for a corolla peer (server, client or bootstrap)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgpack
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from pydantic import ValidationError

from corolla.protocol.messages import ServerInfo, parse_block_key

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0  # p2pd is slow to start on a busy 2-core machine


class ServerInfoValidator(RecordValidatorBase):
    """Refuses block records whose value is not a valid ServerInfo (other keys pass through)."""

    def validate(self, record: DHTRecord) -> bool:
        try:
            key = msgpack.unpackb(record.key, raw=False)
        except Exception:
            return True  # not a msgpack string key: not ours
        if not isinstance(key, str) or parse_block_key(key) is None:
            return True
        if not record.subkey:
            return False  # a block record must be keyed per server
        try:
            ServerInfo.model_validate(msgpack.unpackb(record.value, raw=False))
        except (ValidationError, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            log.debug("rejected an invalid ServerInfo record under %s", key)
            return False
        return True


def start_dht(
    initial_peers: Sequence[str] = (),
    *,
    client_mode: bool = False,
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    announce_maddrs: Sequence[str] | None = None,
    identity_path: str | None = None,
):
    """Start a DHT node in a background process; raise if it cannot reach ``initial_peers``."""
    import hivemind

    return hivemind.DHT(
        initial_peers=list(initial_peers),
        start=True,
        client_mode=client_mode,
        host_maddrs=list(host_maddrs),
        announce_maddrs=list(announce_maddrs) if announce_maddrs else None,
        identity_path=identity_path,
        record_validators=[ServerInfoValidator()],
        startup_timeout=STARTUP_TIMEOUT_S,
        check_if_identity_free=False,
        num_workers=2,
    )


def visible_maddrs(dht) -> list[str]:
    """The multiaddrs others can use as ``--initial-peers`` to join through this node."""
    return [str(addr) for addr in dht.get_visible_maddrs()]
