"""Reading the swarm's state out of the DHT (validated, nothing trusted): one model's servers
(:func:`fetch_swarm_state`), or every model the swarm lists under ``corolla.models`` with its
servers (:func:`fetch_swarm_overview`; see :mod:`corolla.swarm.announce` for how models are listed)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import Mapping

from pydantic import ValidationError

from corolla.protocol.messages import (
    MODELS_KEY,
    ModelRecord,
    ServerInfo,
    ServerState,
    WrongComputationReport,
    block_key,
    reports_key,
)

log = logging.getLogger(__name__)

MAX_MODELS = 64  # models read from the list at most (by id): a flood of records cannot make a reader fetch more


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

    @property
    def complete(self) -> bool:
        """Every block has an online server: the model can be run."""
        return all(self.coverage())


_RANK = {ServerState.ONLINE: 2, ServerState.JOINING: 1, ServerState.OFFLINE: 0}


def fetch_swarm_state(dht, model_id: str, num_blocks: int) -> SwarmState:
    keys = [block_key(model_id, b) for b in range(num_blocks)]
    raw = dht.run_coroutine(functools.partial(_get_many, keys=keys))
    return parse_swarm_state(model_id, num_blocks, raw)


def fetch_swarm_state_and_reports(dht, model_id: str, num_blocks: int) -> tuple[SwarmState, dict[str, set[str]]]:
    """:func:`fetch_swarm_state`, and in the same read the reports about the model's servers
    (:func:`parse_reports`)."""
    keys = [block_key(model_id, b) for b in range(num_blocks)] + [reports_key(model_id)]
    raw = dht.run_coroutine(functools.partial(_get_many, keys=keys))
    return parse_swarm_state(model_id, num_blocks, raw), parse_reports(raw.get(reports_key(model_id)))


def parse_reports(raw: dict | None) -> dict[str, set[str]]:
    """``{reporting peer: {accused peers}}`` from the records under a model's reports key (each
    signed by its reporter, whose peer id is the subkey); a record that does not parse is dropped."""
    reports: dict[str, set[str]] = {}
    for subkey, value in (raw.items() if isinstance(raw, dict) else ()):
        try:
            report = WrongComputationReport.model_validate(value)
        except ValidationError:
            continue
        if isinstance(subkey, str):
            reports[subkey] = set(report.accused) - {subkey}
    return reports


def fetch_models(dht) -> dict[str, int]:
    """Every model the swarm lists (model id -> number of blocks), sorted by id."""
    raw = dht.run_coroutine(functools.partial(_get_many, keys=[MODELS_KEY]))
    return parse_models(raw.get(MODELS_KEY))


def fetch_swarm_overview(dht, models: Mapping[str, int] | None = None) -> list[SwarmState]:
    """The state of every model the swarm lists, and of ``models`` (id -> number of blocks, which
    wins over what the list says: the caller read the model's own config), sorted by model id."""
    wanted = {**fetch_models(dht), **(models or {})}
    keys = [block_key(model_id, b) for model_id, n in wanted.items() for b in range(n)]
    raw = dht.run_coroutine(functools.partial(_get_many, keys=keys)) if keys else {}
    return [parse_swarm_state(model_id, n, raw) for model_id, n in sorted(wanted.items())]


def parse_models(raw: dict | None) -> dict[str, int]:
    """Turn the records of ``corolla.models`` (``{server's peer id: value}``) into ``{model id:
    number of blocks}``, sorted by id and at most :data:`MAX_MODELS`; a record that does not parse
    is dropped; where servers disagree on a model's number of blocks, most of them win."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for subkey, value in (raw.items() if isinstance(raw, dict) else ()):
        try:
            record = ModelRecord.model_validate(value)
        except ValidationError:
            log.debug("dropping an invalid record of the list of models under %r", subkey)
            continue
        if isinstance(subkey, str):
            counts[record.model_id][record.num_blocks] += 1
    models = {model_id: max(sorted(c), key=c.__getitem__) for model_id, c in counts.items()}
    return dict(sorted(models.items())[:MAX_MODELS])


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
        entries = raw.get(block_key(model_id, block))
        for peer_id, value in (entries.items() if isinstance(entries, dict) else ()):
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
