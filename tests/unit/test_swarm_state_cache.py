"""How a client reuses its read of the swarm's state and plans around bans, without a network."""

from __future__ import annotations

import threading
import time

import pytest

from corolla.client import remote
from corolla.client.config import ClientConfig
from corolla.client.remote import SwarmClient


def _client(monkeypatch, reads: list, **config) -> SwarmClient:
    gate = threading.Event()
    gate.set()

    def fetch(dht, model_id, num_blocks):
        gate.wait(10)
        reads.append(time.monotonic())
        return f"state {len(reads)}", {}  # (the state, the reports about its servers)

    monkeypatch.setattr(remote, "fetch_swarm_state_and_reports", fetch)
    client = SwarmClient.__new__(SwarmClient)
    client.dht, client.model_id, client.num_blocks = None, "m", 4
    client.config = ClientConfig(**config)
    client._state, client._refresh_lock, client._refreshing = None, threading.Lock(), False
    client.block_hashes = None  # not checked here (tests/swarm/test_model_identity.py)
    client.gate = gate
    return client


def test_a_recent_read_is_reused_a_stale_one_is_used_while_a_fresh_one_is_read(monkeypatch):
    reads: list = []
    client = _client(monkeypatch, reads, state_max_age_s=5.0, state_stale_s=60.0)
    assert client.swarm_state(5.0) == "state 1"  # nothing read yet: read now
    assert client.swarm_state(5.0) == "state 1" and len(reads) == 1  # recent: reused
    client._state = (time.monotonic() - 10, "old")  # past max age, within the stale limit
    client.gate.clear()  # the background read takes its time
    assert client.swarm_state(5.0) == "old"  # answered at once with the old read
    assert client.swarm_state(5.0) == "old" and client._refreshing  # one background read at a time
    client.gate.set()
    deadline = time.monotonic() + 10
    while client._refreshing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.swarm_state(5.0) == "state 2" and len(reads) == 2


def test_too_old_or_fresh_only_reads_now(monkeypatch):
    reads: list = []
    client = _client(monkeypatch, reads, state_max_age_s=5.0, state_stale_s=60.0)
    client._state = (time.monotonic() - 120, "ancient")
    assert client.swarm_state(5.0) == "state 1"  # past the stale limit: read before answering
    client._state = (time.monotonic() - 10, "old")
    assert client.swarm_state(0.0) == "state 2"  # a caller that wants a fresh read (after a failure) gets one


def test_servers_whose_blocks_hash_otherwise_are_left_out(monkeypatch):
    from corolla.protocol.messages import ServerInfo
    from corolla.swarm.discovery import ServerRecord, SwarmState

    ours = tuple(f"{b:016x}" for b in range(4))

    def info(start, end, hashes):
        return ServerInfo(state="online", start_block=start, end_block=end, version="0", dtype="float32",
                          inference_rps=1.0, forward_tps=1.0, cache_tokens_left=10, block_hashes=hashes)

    servers = (ServerRecord("a", info(0, 2, ours[0:2])), ServerRecord("b", info(2, 4, ours[2:4])),
               ServerRecord("c", info(1, 3, (ours[1], "f" * 16))),  # another block 2
               ServerRecord("d", info(0, 4, ())))  # announces no hashes: nothing to check them by
    monkeypatch.setattr(remote, "fetch_swarm_state_and_reports",
                        lambda dht, model_id, n: (SwarmState(model_id, n, servers), {}))
    client = SwarmClient.__new__(SwarmClient)
    client.dht, client.model_id, client.num_blocks, client._odd_servers = None, "m@0123456789abcdef", 4, set()
    client.block_hashes = ours
    assert [s.peer_id for s in client._read_state().servers] == ["a", "b"]
    client.block_hashes = None  # not checked
    assert [s.peer_id for s in client._read_state().servers] == ["a", "b", "c", "d"]


def test_a_server_banned_for_answering_late_is_still_used_where_no_other_serves(monkeypatch):
    """A server that answered one probe too late (a flood, a stall) is banned, but where it is the
    only one for its blocks the client uses it rather than wait for one that will not come; a
    server that failed, or was found computing wrong, is not."""
    from corolla.errors import NoRouteError
    from corolla.protocol.messages import ServerInfo
    from corolla.swarm.discovery import ServerRecord, SwarmState

    info = ServerInfo(state="online", start_block=0, end_block=4, version="0", dtype="float32",
                      inference_rps=1.0, forward_tps=1.0, cache_tokens_left=100)
    state = SwarmState("m", 4, (ServerRecord("only", info),))
    client = SwarmClient.__new__(SwarmClient)
    client.config = ClientConfig(route_timeout_s=0.2)
    client._bans, client._slow, client.distrusted, client.reported = {}, set(), set(), set()
    client.swarm_state = lambda max_age_s=0.0: state
    client.measure_rtts = lambda state: {}
    client.ban("only", slow=True)
    assert [hop.peer_id for hop in client.plan()] == ["only"]
    client.ban("only")  # failed outright this time
    with pytest.raises(NoRouteError):
        client.plan()
    client._bans.clear()
    client.distrusted.add("only")
    with pytest.raises(NoRouteError):
        client.plan()
    client.distrusted.clear()
    client.reported.add("only")  # another client's word: used, there being no other
    assert [hop.peer_id for hop in client.plan()] == ["only"]
