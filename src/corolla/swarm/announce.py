"""Announcing a server in the DHT: one record per block it holds (the peer id as subkey), and its
model in the swarm's list of models.

The list of models is one well-known key, :data:`~corolla.protocol.messages.MODELS_KEY`, with one
subkey per server (its peer id) and a :class:`~corolla.protocol.messages.ModelRecord` (model id and
number of blocks) as value, written along with its block records, so a model is listed as long as
some server of it keeps announcing and expires like the block records once none does: no
registry, nothing to clean up, and a reader finds every model with one read (then reads the block
records of each to see its coverage). Every record sits under its writer's peer id and carries its
signature (:mod:`corolla.swarm.identity`): no peer can write or overwrite another's.
"""

from __future__ import annotations

import functools
import logging

from hivemind.utils import get_dht_time
from pydantic import ValidationError

from corolla.protocol.messages import (
    MODELS_KEY,
    ModelRecord,
    ServerInfo,
    WrongComputationReport,
    block_key,
    reports_key,
)
from corolla.swarm.dht import dht_models

log = logging.getLogger(__name__)
_warned: set[str] = set()  # model ids already reported as unlistable (announcements repeat every few seconds)


def announce(dht, model_id: str, info: ServerInfo, expiration_s: float, wait: bool = True, *,
             num_blocks: int | None = None):
    """Store ``info`` under every block the server holds, and the model under ``corolla.models``;
    both expire unless re-announced. ``num_blocks``: the model's number of blocks (default: as
    ``dht`` was started with, see :func:`~corolla.swarm.dht.start_dht`); unknown, the model is not listed."""
    keys = [block_key(model_id, b) for b in range(info.start_block, info.end_block)]
    value = info.model_dump(mode="json")
    values = [value] * len(keys)
    record = model_record(model_id, num_blocks if num_blocks is not None else dht_models(dht).get(model_id))
    if record is not None:
        keys.append(MODELS_KEY)
        values.append(record.model_dump(mode="json"))
    coro = functools.partial(_store, keys=keys, values=values, expiration=get_dht_time() + expiration_s)
    return dht.run_coroutine(coro, return_future=not wait)


def model_record(model_id: str, num_blocks: int | None) -> ModelRecord | None:
    """The model's entry in the list of models; None (and a log line) when it cannot have one."""
    if num_blocks is None:
        return None
    try:
        return ModelRecord(model_id=model_id, num_blocks=num_blocks)
    except ValidationError as e:
        if model_id in _warned:
            return None
        _warned.add(model_id)
        log.warning("not listing %r under %s: %s", model_id, MODELS_KEY, e.errors()[0]["msg"])
        return None


async def _store(dht, node, *, keys, values, expiration):
    peer = dht.peer_id.to_base58()  # the subkey of every record: the only one this node can sign
    return await node.store_many(keys, values, expiration, subkeys=[peer] * len(keys))


def report_wrong(dht, model_id: str, accused: list[str], expiration_s: float = 600.0, wait: bool = True):
    """Store this node's signed :class:`~corolla.protocol.messages.WrongComputationReport` about
    ``model_id``'s servers ``accused`` (all this node accuses: the record replaces its last one)."""
    report = WrongComputationReport(accused=tuple(sorted(set(accused)))[-64:], reported_at=get_dht_time())
    coro = functools.partial(_store, keys=[reports_key(model_id)], values=[report.model_dump(mode="json")],
                             expiration=get_dht_time() + expiration_s)
    return dht.run_coroutine(coro, return_future=not wait)
