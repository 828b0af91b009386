"""Reading the swarm's state for a model out of the DHT (validated, nothing trusted)."""

from __future__ import annotations

import dataclasses
import functools
import logging

from pydantic import ValidationError

from corolla.protocol.messages import ServerInfo, ServerState, block_key

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServerRecord:
    peer_id: str
    info: ServerInfo

    @property
    def start(self) -> int:
        return self.info.start_block

    @property
    def end(self) -> int:
        return self.info.end_block


@dataclasses.dataclass(frozen=True)
class SwarmState:
    model_id: str
    num_blocks: int
    servers: tuple[ServerRecord, ...]  # sorted by peer id

    def coverage(self, online_only: bool = True) -> list[int]:
        """Number of servers holding each block."""
        counts = [0] * self.num_blocks
        for s in self.servers:
            if online_only and s.info.state is not ServerState.ONLINE:
                continue
            for b in range(s.start, min(s.end, self.num_blocks)):
                counts[b] += 1
        return counts


_RANK = {ServerState.ONLINE: 2, ServerState.JOINING: 1, ServerState.OFFLINE: 0}


def fetch_swarm_state(dht, model_id: str, num_blocks: int) -> SwarmState:
    keys = [block_key(model_id, b) for b in range(num_blocks)]
    raw = dht.run_coroutine(functools.partial(_get_many, keys=keys))
    return parse_swarm_state(model_id, num_blocks, raw)


async def _get_many(dht, node, *, keys):
    # latest values from the network, not the node's cache: a server that just joined must show
    found = await node.get_many(keys, sufficient_expiration_time=float("inf"))
    out = {}
    for key, entry in found.items():
        value = getattr(entry, "value", None)
        if isinstance(value, dict):
            out[key] = {subkey: getattr(v, "value", None) for subkey, v in value.items()}
    return out


def parse_swarm_state(model_id: str, num_blocks: int, raw: dict) -> SwarmState:
    """Turn ``{block key: {peer id: value}}`` into validated server records.

    A server is kept only when every record it announced parses and lies inside the span it
    claims; a server with any bad record is dropped (and logged), never trusted.
    """
    seen: dict[str, ServerInfo] = {}
    bad: set[str] = set()
    for block in range(num_blocks):
        for peer_id, value in (raw.get(block_key(model_id, block)) or {}).items():
            if not isinstance(peer_id, str) or peer_id in bad:
                continue
            try:
                info = ServerInfo.model_validate(value)
            except ValidationError:
                log.debug("dropping an invalid record of %s for block %d", peer_id, block)
                bad.add(peer_id)
                continue
            if not info.start_block <= block < info.end_block or info.end_block > num_blocks:
                bad.add(peer_id)
                continue
            # (records of one peer may disagree on the span: it moved; each record's own span is checked)
            # a server that moved still has records of its old span until they expire: prefer the live one
            if peer_id not in seen or _RANK[info.state] > _RANK[seen[peer_id].state]:
                seen[peer_id] = info
    servers = tuple(ServerRecord(p, i) for p, i in sorted(seen.items()) if p not in bad)
    return SwarmState(model_id, num_blocks, servers)
