"""Relayed servers: how their addresses read, the p2pd flag that makes the relay reservation
immediate, which peers relay and how a relay starts again until p2pd's configured relay answers
(the real relay, and its check, run in tests/swarm/test_hosts.py)."""

from __future__ import annotations

import logging

import pytest

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


def test_public_addresses_are_globally_routable_ones():
    from corolla.swarm.relay import public_maddr

    for maddr in ("/ip4/11.77.0.1/tcp/31337", "/ip4/8.8.8.8/tcp/1/p2p/12D3KooWRelay", "/ip6/2606:4700::1/tcp/1"):
        assert public_maddr(maddr), maddr
    for maddr in ("/ip4/127.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/1", "/ip4/192.168.1.2/tcp/1", "/ip4/0.0.0.0/tcp/1",
                  "/ip4/100.64.0.1/tcp/1", "/ip6/::1/tcp/1", "/ip6/fd00::1/tcp/1", "/dns4/example.com/tcp/1",
                  "/ip4/not-an-ip/tcp/1", ""):
        assert not public_maddr(maddr), maddr


def test_full_peers_at_a_public_address_relay():
    from corolla.swarm.relay import serves_as_relay

    public, local = ["/ip4/11.77.0.1/tcp/1"], ["/ip4/127.0.0.1/tcp/1"]
    assert serves_as_relay(public, None, client_mode=False, use_relay=False)
    assert serves_as_relay(["/ip4/0.0.0.0/tcp/1"], public, client_mode=False, use_relay=False)  # announced
    assert not serves_as_relay(local, None, client_mode=False, use_relay=False)
    assert not serves_as_relay(["/ip4/0.0.0.0/tcp/1"], None, client_mode=False, use_relay=False)
    assert not serves_as_relay(public, None, client_mode=True, use_relay=False)  # clients relay for nobody
    assert not serves_as_relay(public, None, client_mode=False, use_relay=True)  # itself behind NAT


def test_circuit_address_is_written_the_way_the_daemon_reads_it():
    """go-multiaddr: /p2p/ carries the peer id's multihash (hivemind's library writes a CID there)."""
    from hivemind.p2p import PeerID
    from hivemind.utils.multiaddr import Multiaddr

    from corolla.swarm.relay import circuit_maddr_bytes

    peer = "12D3KooWPw7eCEXrMoEGJxK7Uv2YTtehQp3vqsZJTs3nSfXZVsA1"
    data = circuit_maddr_bytes(f"/ip4/11.77.0.1/tcp/31337/p2p/{peer}")
    multihash = PeerID.from_base58(peer).to_bytes()
    assert data == (Multiaddr("/ip4/11.77.0.1/tcp/31337").to_bytes() + bytes([0xA5, 0x03, len(multihash)])
                    + multihash + bytes([0xA2, 0x02]))
    with pytest.raises(ValueError):
        circuit_maddr_bytes("/ip4/11.77.0.1/tcp/31337")


class FakeDHT:
    def __init__(self, n: int):
        self.n, self.stopped = n, False

    def get_visible_maddrs(self):
        return [f"/ip4/11.77.0.1/tcp/31337/p2p/12D3KooWPeer{self.n}"]

    def shutdown(self):
        self.stopped = True


@pytest.fixture
def fake_starts(monkeypatch):
    """start_dht with fake DHT processes; returns (kwargs of each start, started DHTs, probe answers)."""
    import corolla.swarm.dht as dht

    starts, dhts, answers = [], [], []

    def start(*args, **kwargs):
        starts.append(kwargs)
        dhts.append(FakeDHT(len(dhts)))
        return dhts[-1]

    monkeypatch.setattr(dht, "_start_dht", start)
    monkeypatch.setattr(dht, "check_relay", lambda maddr: answers.pop(0))
    return starts, dhts, answers


def test_a_relay_starts_its_daemon_again_until_the_configured_relay_answers(fake_starts, caplog):
    from corolla.swarm.dht import start_dht

    starts, dhts, answers = fake_starts
    answers.extend([False, False, True])
    caplog.set_level(logging.INFO, logger="corolla.swarm.dht")
    dht = start_dht(host_maddrs=["/ip4/11.77.0.1/tcp/31337"])
    assert dht is dhts[2] and [d.stopped for d in dhts] == [True, True, False]
    assert all(s["force_reachability"] == "public" for s in starts)
    assert "starting the p2p daemon again (2/" in caplog.text


def test_a_relay_that_cannot_be_checked_starts_anyway(fake_starts):
    from corolla.swarm.dht import start_dht

    starts, dhts, answers = fake_starts
    answers.append(None)  # no relayed connection could be made (logged by check_relay)
    assert start_dht(host_maddrs=["/ip4/11.77.0.1/tcp/31337"]) is dhts[0] and not dhts[0].stopped


def test_a_relay_that_keeps_cutting_is_kept_with_a_warning(fake_starts, caplog):
    from corolla.swarm.dht import start_dht
    from corolla.swarm.relay import RELAY_START_ATTEMPTS

    starts, dhts, answers = fake_starts
    answers.extend([False] * RELAY_START_ATTEMPTS)
    assert start_dht(host_maddrs=["/ip4/11.77.0.1/tcp/31337"]) is dhts[-1] and not dhts[-1].stopped
    assert len(dhts) == RELAY_START_ATTEMPTS and "cut after 128 KiB" in caplog.text


def test_peers_that_relay_for_nobody_start_once_unforced(fake_starts):
    from corolla.swarm.dht import start_dht

    starts, dhts, answers = fake_starts
    start_dht(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    start_dht(["/ip4/11.77.0.1/tcp/1/p2p/12D3KooWRelay"], client_mode=True, host_maddrs=["/ip4/11.77.0.4/tcp/0"])
    assert len(dhts) == 2 and all("force_reachability" not in s for s in starts)
