"""Announcing a server's blocks in the DHT: one record per block, the peer id as subkey."""

from __future__ import annotations

import functools

from hivemind.utils import get_dht_time

from corolla.protocol.messages import ServerInfo, block_key


def announce(dht, model_id: str, info: ServerInfo, expiration_s: float, wait: bool = True):
    """Store ``info`` under every block the server holds; expires unless re-announced."""
    keys = [block_key(model_id, b) for b in range(info.start_block, info.end_block)]
    value = info.model_dump(mode="json")
    coro = functools.partial(_store, keys=keys, value=value, expiration=get_dht_time() + expiration_s)
    return dht.run_coroutine(coro, return_future=not wait)


async def _store(dht, node, *, keys, value, expiration):
    subkey = dht.peer_id.to_base58()
    return await node.store_many(keys, [value] * len(keys), expiration, subkeys=[subkey] * len(keys))
