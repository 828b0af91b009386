"""Fair limits per peer: what one peer (or a crowd of new ones) may take of a server.

A public server meets peers nobody vouches for. Each peer gets a request rate and a byte rate
(token buckets: a burst, then a steady rate), a number of open streams, and a deadline for a
stream's first message (a stream opened and left silent holds a slot: slowloris). Peers the
server has never served before share a global number of sessions, so a flood of fresh identities
(cheap to make) cannot take the sessions of peers it knows. Every refusal is a typed error the
client can act on (:class:`~corolla.errors.RateLimitedError`, :class:`~corolla.errors.TooManyStreamsError`,
:class:`~corolla.errors.ServerBusyError`); other peers are served as before.

State is bounded: at most ``MAX_TRACKED_PEERS`` peers are tracked (the least recently seen go first),
so fresh identities cannot grow it without bound.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterator

from corolla.errors import RateLimitedError, ServerBusyError, TooManyStreamsError

MAX_TRACKED_PEERS = 4096


@dataclasses.dataclass(frozen=True)
class Limits:
    requests_per_s: float = 1000.0  # per peer, steady; 0 = unlimited
    request_burst: float = 2000.0
    bytes_per_s: float = 256 * 1024**2  # per peer, steady; 0 = unlimited
    byte_burst: float = 1024**3
    streams_per_peer: int = 64  # open streams (sessions, pushes, training) of one peer
    first_message_s: float = 10.0  # a stream must send its first message within this
    new_peer_sessions: int = 32  # sessions held by all peers not yet known, together (one peer: max 16)
    known_after_steps: int = 4  # a peer is known once this many of its steps were served
    # tokens of peers not yet known in one batched forward (one bigger step still runs, alone): a
    # known client's step, served first, never waits behind more than this much of a stranger's work
    new_peer_batch_tokens: int = 256


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float):
        self.level, self.stamp = level, stamp

    def take(self, amount: float, rate: float, burst: float, now: float) -> bool:
        self.level = min(burst, self.level + (now - self.stamp) * rate)
        self.stamp = now
        if self.level < amount:
            return False
        self.level -= amount
        return True


class _Peer:
    __slots__ = ("requests", "bytes", "streams", "served")

    def __init__(self, limits: Limits, now: float):
        self.requests = _Bucket(limits.request_burst, now)
        self.bytes = _Bucket(limits.byte_burst, now)
        self.streams = 0
        self.served = 0


class PeerLimits:
    """The limits of one server; called from its event loop only (no lock)."""

    def __init__(self, limits: Limits | None = None, clock=time.monotonic):
        self.limits, self._clock = limits or Limits(), clock
        self._peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.refused: collections.Counter = collections.Counter()  # by error type, for tests and logs

    def _peer(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(self.limits, self._clock())
            if len(self._peers) > MAX_TRACKED_PEERS:  # forget the least recently seen peer without open streams
                for old, old_state in self._peers.items():
                    if not old_state.streams and old != peer:
                        del self._peers[old]
                        break
        else:
            self._peers.move_to_end(peer)
        return state

    def admit(self, peer: str, nbytes: int = 0) -> None:
        """Charge one request of ``nbytes`` to ``peer``; RateLimitedError if over its rates."""
        lim, state, now = self.limits, self._peer(peer), self._clock()
        if lim.requests_per_s and not state.requests.take(1.0, lim.requests_per_s, lim.request_burst, now):
            self.refused["rate"] += 1
            raise RateLimitedError(f"more than {lim.requests_per_s:g} requests/s from peer {peer}; slow down")
        if lim.bytes_per_s and nbytes and not state.bytes.take(float(nbytes), lim.bytes_per_s, lim.byte_burst, now):
            self.refused["bytes"] += 1
            raise RateLimitedError(f"more than {lim.bytes_per_s / 1024**2:g} MiB/s from peer {peer}; slow down")

    @contextlib.contextmanager
    def stream(self, peer: str) -> Iterator[None]:
        """Hold one of ``peer``'s stream slots for the ``with`` block; TooManyStreamsError if none is free."""
        state = self._peer(peer)
        if state.streams >= self.limits.streams_per_peer:
            self.refused["streams"] += 1
            raise TooManyStreamsError(f"peer {peer} already has {state.streams} streams open here "
                                      f"(the limit per peer)")
        state.streams += 1
        try:
            yield
        finally:
            state.streams -= 1

    def known(self, peer: str) -> bool:
        return peer in self._known

    def check_new_session(self, peer: str, sessions_of_new_peers: int) -> None:
        """Refuse a session to a peer not yet known when peers not yet known hold the shared share."""
        if not self.known(peer) and sessions_of_new_peers >= self.limits.new_peer_sessions:
            self.refused["new_peers"] += 1
            raise ServerBusyError(f"this server holds {sessions_of_new_peers} sessions of peers it has not served "
                                  "before (its limit for new peers); try again later or another server")

    def served(self, peer: str) -> None:
        """A step of ``peer``'s was computed and answered."""
        if peer in self._known:
            self._known.move_to_end(peer)
            return
        state = self._peer(peer)
        state.served += 1
        if state.served >= self.limits.known_after_steps:
            self._known[peer] = None
            while len(self._known) > MAX_TRACKED_PEERS:
                self._known.popitem(last=False)
