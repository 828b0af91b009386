"""Relayed servers: how their addresses read, and the p2pd flag that makes the relay reservation
immediate (the real relay runs in tests/swarm/test_hosts.py)."""

from __future__ import annotations

from corolla.cli.swarm import _address
from corolla.protocol.messages import ServerInfo, ServerState
from corolla.swarm.dht import _static_relays

PEER = "12D3KooWServer"
RELAY = "/ip4/11.77.0.1/tcp/31337/p2p/12D3KooWRelay"


def info(*addrs: str) -> ServerInfo:
    return ServerInfo(state=ServerState.ONLINE, start_block=0, end_block=2, version="0", dtype="float32",
                      inference_rps=1.0, forward_tps=1.0, cache_tokens_left=1, addrs=addrs)


def test_a_circuit_address_marks_the_server_relayed():
    direct = info(f"/ip4/11.77.0.2/tcp/31338/p2p/{PEER}")
    assert not direct.relayed and _address(PEER, direct) == "/ip4/11.77.0.2/tcp/31338"
    relayed = info(f"/ip4/127.0.0.1/tcp/31338/p2p/{PEER}", f"{RELAY}/p2p-circuit/p2p/{PEER}")
    assert relayed.relayed and _address(PEER, relayed) == f"relayed via {RELAY}"
    assert not info().relayed and _address(PEER, info()) == "?"  # an older server announces no addresses


def test_relayed_records_round_trip():
    relayed = info(f"{RELAY}/p2p-circuit/p2p/{PEER}")
    assert ServerInfo.model_validate(relayed.model_dump(mode="json")) == relayed


def test_use_relay_starts_p2pd_without_relay_discovery_and_restores():
    from hivemind.p2p.p2p_daemon import P2P

    original = P2P.__dict__["_make_process_args"]
    with _static_relays(False):
        assert "-relayDiscovery=0" not in P2P._make_process_args("p2pd", relay=True)
    with _static_relays(True):
        assert P2P._make_process_args("p2pd", relay=True) == ["p2pd", "-relay=1", "-relayDiscovery=0"]
    assert P2P.__dict__["_make_process_args"] is original
    assert P2P._make_process_args("p2pd", relay=True) == ["p2pd", "-relay=1"]
