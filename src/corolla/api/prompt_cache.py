"""Prompt caching: inference sessions kept open after their generation, so that the next prompt that
starts the same way sends the swarm only what differs.

A chat's next turn repeats the whole conversation, an agent's next step its whole transcript, and a
completion at the next keystroke most of the file around the cursor; without a cache the swarm
computes all of it again (the prefill: about 8 ms a token on a CPU server for Qwen2.5-Coder-0.5B, so
seconds for an agent's transcript). After a generation ends, :class:`PromptCache` keeps its session
(the servers keep its keys and values) with the tokens they hold. A new request takes the kept
session whose tokens share the longest prefix with its prompt, rolls it back to that prefix
(:meth:`InferenceSession.truncate`: no round trip) and sends only the rest. A kept session that shares
nothing is still reused (rolled back to nothing): it saves opening a session along a chain.

Bounds: at most ``max_sessions`` are kept (the least recently used one is closed for a new one), each
for ``max_idle_s``. A request opens a new session only when nothing is kept for it, so the sessions
open on the swarm are never more than the generations that ran at once. A kept session whose server
died or dropped its cache in the meantime recovers as any session does (re-route, replay).

Kept sessions must outgrow the prompt they were opened for, so the engine opens them long (up to the
shortest ``max_session_length`` its servers announce; servers grow their caches as sessions do, never
reserving the length up front).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corolla.client.session import InferenceSession

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromptCacheConfig:
    max_sessions: int = 4  # kept at most (per engine)
    max_idle_s: float = 120.0  # a kept session unused this long is closed

    def __post_init__(self):
        if self.max_sessions < 1 or self.max_idle_s <= 0:
            raise ValueError("prompt cache: max_sessions >= 1 and max_idle_s > 0")


DEFAULT = PromptCacheConfig()


@dataclasses.dataclass
class _Kept:
    session: InferenceSession
    tokens: list[int]  # what its servers hold, in order
    adapter: str | None
    since: float


@dataclasses.dataclass
class PromptCacheStats:
    hits: int = 0  # requests that reused a kept session
    reused_tokens: int = 0  # prompt tokens those did not send again
    opened: int = 0  # requests that found nothing kept for them
    kept: int = 0  # sessions kept after their generation
    closed: int = 0  # kept sessions closed (idle too long, no room, unusable, shutdown)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    """Kept sessions of one engine (see the module's docstring); thread-safe."""

    def __init__(self, config: PromptCacheConfig = DEFAULT, clock: Callable[[], float] = time.monotonic):
        self.config, self.clock = config, clock
        self.stats = PromptCacheStats()
        self._kept: list[_Kept] = []  # least recently kept first
        self._lock = threading.Lock()
        self._closed = False

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, prompt: Sequence[int], need: int, adapter: str | None) -> tuple[InferenceSession | None, int]:
        """A kept session for ``prompt`` (rolled back to the prefix it shares, leaving at least the last
        prompt token to send) and that prefix's length; (None, 0) when none fits. ``need``: positions
        the generation may reach."""
        drop: list[_Kept] = []
        best: _Kept | None = None
        with self._lock:
            now = self.clock()
            for kept in list(self._kept):
                if now - kept.since > self.config.max_idle_s or kept.session.closed:
                    self._kept.remove(kept)
                    drop.append(kept)
            fits = [k for k in self._kept if k.adapter == adapter and k.session.max_length >= need]
            if fits:
                best = max(reversed(fits), key=lambda k: common_prefix(k.tokens, prompt))  # the latest of equals
                self._kept.remove(best)
            elif self._kept:  # kept for another adapter or too short: make room for the new session
                drop.append(self._kept.pop(0))
        self._close(drop)
        if best is None:
            self.stats.opened += 1
            return None, 0
        keep = min(common_prefix(best.tokens, prompt), len(prompt) - 1)
        try:
            best.session.truncate(keep)
        except Exception as e:  # closed meanwhile (a shutdown): open a new one
            log.debug("a kept session cannot be reused: %s", e)
            self._close([best])
            self.stats.opened += 1
            return None, 0
        self.stats.hits += 1
        self.stats.reused_tokens += keep
        return best.session, keep

    def put(self, session: InferenceSession, tokens: Sequence[int], adapter: str | None) -> bool:
        """Keep ``session``, whose servers hold ``tokens``; False (and the session closed) when the
        cache is shut or the session cannot be reused."""
        if session.closed or session.position != len(tokens):
            self._close_session(session)
            return False
        drop: list[_Kept] = []
        with self._lock:
            if self._closed:
                drop_self = True
            else:
                drop_self = False
                self._kept.append(_Kept(session, list(tokens), adapter, self.clock()))
                while len(self._kept) > self.config.max_sessions:
                    drop.append(self._kept.pop(0))
        if drop_self:
            self._close_session(session)
            return False
        self.stats.kept += 1
        self._close(drop)
        return True

    def clear(self) -> None:
        with self._lock:
            drop, self._kept = self._kept, []
        self._close(drop)

    def close(self) -> None:
        """Close every kept session and keep none from now on."""
        with self._lock:
            self._closed = True
        self.clear()

    def _close(self, kept: list[_Kept]) -> None:
        for k in kept:
            self.stats.closed += 1
            self._close_session(k.session)

    @staticmethod
    def _close_session(session: InferenceSession) -> None:
        try:
            session.close()
        except Exception as e:  # the client may be shutting down
            log.debug("closing a kept session failed: %s", e)
