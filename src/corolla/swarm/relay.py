"""Being a circuit relay that keeps its reservations and does not cut relayed connections short.

Every corolla peer's p2pd offers circuit relaying, and a server behind NAT (``--use-relay``) reserves
a slot on its relays (by default its initial peers). p2pd (go-libp2p-daemon 0.5, libp2p 0.32) runs
*two* relay services under the same protocol, and whichever registered last answers:

- one it starts itself (``-relay``) with go-libp2p's default limits: every relayed connection is
  reset after 128 KiB in either direction or 2 minutes;
- one go-libp2p's relay manager creates (``-relayService``, with p2pd's 4 GiB / 30 min limits) each
  time AutoNAT finds the host publicly reachable, and closes when it finds it is not. Each new one
  starts with no reservations.

So a relayed server that reserved before the relay's AutoNAT verdict loses its reservation a few
seconds later (every dial to it is then refused with NO_RESERVATION, and autorelay does not reserve
again for an hour), and one that reserved while the first service answered is cut off after
128 KiB. A peer with a public address therefore starts with reachability forced public (the
relay manager starts its service at once, and no verdict ever closes it) and checks that a
connection through it carries more than 128 KiB; forced reachability still leaves the order of
the two services to chance, so when the check fails it starts its p2pd again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

PROBE_HANDLER = "corolla.relay-probe"
PROBE_BYTES = 192 * 1024  # more than go-libp2p's default relay limit (128 KiB per direction)
PROBE_TIMEOUT_S = 60.0
# which relay answers is chance (see above): on one 2-core machine 1, 1, 4 and 10+ starts in a row
# lost (a start takes ~0.5 s there), so 10 attempts were not enough
RELAY_START_ATTEMPTS = 40
_CHUNK = 16 * 1024


def public_maddr(maddr: str) -> bool:
    """Whether ``maddr`` starts with a globally routable /ip4 or /ip6 address."""
    parts = str(maddr).split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return False
    try:
        return ipaddress.ip_address(parts[2]).is_global
    except ValueError:
        return False


def serves_as_relay(host_maddrs: Sequence[str], announce_maddrs: Sequence[str] | None, *, client_mode: bool,
                    use_relay: bool) -> bool:
    """A full peer that others reach at a public address: relayed servers may reserve slots on it.
    (A relay advertises only its public addresses in a reservation, so a peer without one relays
    for nobody.)"""
    if client_mode or use_relay:
        return False
    return any(public_maddr(m) for m in (announce_maddrs or host_maddrs))


def check_relay(relay_maddr: str, nbytes: int = PROBE_BYTES, timeout_s: float = PROBE_TIMEOUT_S) -> bool | None:
    """Whether a relayed connection through ``relay_maddr`` (``/.../p2p/PEER``) carries ``nbytes``
    (True), or is cut before (False); None when no relayed connection could be made to find out.
    Two throwaway peers in this process: one behind the relay (reachable only through it, as with
    ``--use-relay``) and one that sends it ``nbytes`` through the relay. Runs its own event loop in a
    thread, so it may be called from anywhere."""
    result: list[bool | None] = []

    def run() -> None:
        try:
            result.append(asyncio.run(asyncio.wait_for(_probe(relay_maddr, nbytes), timeout_s)))
        except Exception as e:
            log.warning("could not check the relay at %s: %s: %s", relay_maddr, type(e).__name__, e)
            result.append(None)

    thread = threading.Thread(target=run, name="corolla-relay-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 30.0)
    return result[0] if result else None


async def _probe(relay_maddr: str, nbytes: int) -> bool:
    """True when ``nbytes`` went through, False when the relayed connection was cut; raises when
    none could be made. Neither peer bootstraps (a failed bootstrap would stop its p2pd): the one
    behind the relay connects to it to reserve a slot, the other dials it through the relay."""
    from hivemind.p2p import P2P

    behind = dialer = None
    try:
        with _static_relays(True):
            behind = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], use_auto_relay=True,
                                      force_reachability="private", trusted_relays=[relay_maddr], dht_mode="client")
        received = asyncio.get_running_loop().create_future()

        async def sink(_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                (size,) = struct.unpack(">Q", await reader.readexactly(8))
                await reader.readexactly(size)
                writer.write(b"ok")
                await writer.drain()
                received.set_result(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # cut: the dialer sees it too
            finally:
                writer.close()

        await behind.add_binary_stream_handler(PROBE_HANDLER, sink)
        while not any("/p2p-circuit" in str(a) for a in await behind.get_visible_maddrs(latest=True)):
            await asyncio.sleep(0.1)  # until the relay granted the reservation
        dialer = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], dht_mode="client")
        _, reader, writer = await _open(dialer, relay_maddr, behind.peer_id)
        try:
            writer.write(struct.pack(">Q", nbytes))
            chunk = bytes(_CHUNK)
            for offset in range(0, nbytes, _CHUNK):
                writer.write(chunk[: min(_CHUNK, nbytes - offset)])
                await writer.drain()
            answer = await reader.readexactly(2)
            return answer == b"ok" and await received == nbytes
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            log.info("a relayed connection through %s was cut: %s: %s", relay_maddr, type(e).__name__, e)
            return False
        finally:
            writer.close()
    finally:
        for peer in (dialer, behind):
            if peer is not None:
                await peer.shutdown()


async def _open(dialer, relay_maddr: str, peer_id, deadline_s: float = 10.0):
    """A stream to ``peer_id`` through the relay, dialled at its circuit address (a peer behind a
    relay has no other). The relay may still be settling the reservation it just granted: a failed
    connect is retried after the dial backoff p2pd keeps for that address."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await dialer._client.connect(peer_id, [_RawMaddr(circuit_maddr_bytes(relay_maddr))])
            return await dialer.call_binary_stream_handler(peer_id, PROBE_HANDLER)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


class _RawMaddr:
    """A multiaddr already in binary form (what the daemon's connect request carries)."""

    def __init__(self, data: bytes):
        self._data = data

    def to_bytes(self) -> bytes:
        return self._data


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_P2P, _P2P_CIRCUIT = 421, 290  # multicodec codes


def circuit_maddr_bytes(relay_maddr: str) -> bytes:
    """``RELAY/p2p-circuit`` in binary (``relay_maddr`` = ``/ip4/.../tcp/PORT/p2p/PEER``). hivemind's
    multiaddr library writes a /p2p component as a CID, which the daemon refuses ("length greater
    than remaining number of bytes in buffer"); go-multiaddr wants the peer id's multihash."""
    from hivemind.p2p import PeerID
    from hivemind.utils.multiaddr import Multiaddr

    transport, sep, peer = str(relay_maddr).rpartition("/p2p/")
    if not sep or not transport:
        raise ValueError(f"a relay's multiaddr must end with /p2p/PEER_ID: {relay_maddr}")
    peer_id = PeerID.from_base58(peer).to_bytes()
    return (Multiaddr(transport).to_bytes() + _uvarint(_P2P) + _uvarint(len(peer_id)) + peer_id
            + _uvarint(_P2P_CIRCUIT))


@contextlib.contextmanager
def _static_relays(enabled: bool):
    """While inside (when ``enabled``), p2pd starts with ``-relayDiscovery=0``: it reserves a slot on
    its trusted relays at once. hivemind's P2P.create has no argument for it, and with discovery on
    (p2pd's default) go-libp2p's autorelay waits for 4 candidate relays or 3 minutes (its boot
    delay) before reserving anything: a server behind NAT would stay unreachable that long. The DHT
    process is forked inside, so it inherits the patch; this process gets the original back."""
    if not enabled:
        yield
        return
    from hivemind.p2p.p2p_daemon import P2P

    original = P2P.__dict__["_make_process_args"]

    def make_process_args(*args, **kwargs):
        return original.__func__(*args, **kwargs, relayDiscovery=False)

    P2P._make_process_args = staticmethod(make_process_args)
    try:
        yield
    finally:
        P2P._make_process_args = original
