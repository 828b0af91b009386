"""Continuous batching: the steps of concurrent sessions run as one forward through the span.

Steps are queued as they arrive. Whenever the compute thread is free, the scheduler takes what is
queued — decode steps first, then prefill chunks — up to a token budget, makes room for their KV
caches (growing them within the server's byte budget, waiting or evicting per the policy), and
runs them as one batch. A lone session never waits for company; while a batch computes, the next
one gathers. Steps that left one batch together (a cohort, see ``corolla.protocol.cohorts``)
are waited for a few milliseconds so that they compute together again. Each session's result
is what it would get alone (greedy tokens identical).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import torch

from corolla.errors import CorollaError, ServerBusyError, SessionEvictedError, SessionLostError
from corolla.models.registry import Span
from corolla.protocol.cohorts import CohortGate, next_cohorts
from corolla.protocol.messages import Cohort
from corolla.server.config import CACHE_POLICIES, ServerConfig
from corolla.server.kv import CacheBudget, SessionKV
from corolla.server.sessions import Session, SessionTable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepRequest:
    session: Session
    hidden: torch.Tensor
    position: int
    future: asyncio.Future
    since: float
    cohort: Cohort | None = None  # the batch this step left together with, elsewhere
    destination: str | None = None  # where its output goes next (a peer id), for the next cohort
    capacity: int = 0  # the KV capacity this step needs (decided when it is scheduled)

    @property
    def tokens(self) -> int:
        return self.hidden.shape[0] * self.hidden.shape[1]


class Batcher:
    """Schedules the steps of a server's sessions; its limits and policy come from the server's
    config (``max_batch_tokens``, ``cache_policy``, ``cache_wait_s``, ``batch_window_ms``,
    ``max_cache_bytes_per_peer``, ``cohort_wait_ms``)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        span_getter: Callable[[], Span],
        executor: Executor,
        sessions: SessionTable,
        budget: CacheBudget,
        dtype: torch.dtype,
        generation_getter: Callable[[], int],
        known: Callable[[str], bool] | None = None,
    ):
        """``known``: whether a peer is known (:class:`~corolla.server.limits.PeerLimits`): known
        peers' steps are served first, peers not yet known get at most
        ``peer_limits.new_peer_batch_tokens`` of a batch."""
        if config.cache_policy not in CACHE_POLICIES:
            raise ValueError(f"cache policy must be one of {', '.join(CACHE_POLICIES)}, not {config.cache_policy!r}")
        self._span, self._generation = span_getter, generation_getter
        self._known = known or (lambda peer: True)
        self.new_peer_batch_tokens = config.peer_limits.new_peer_batch_tokens
        self.executor, self.sessions, self.budget, self.dtype = executor, sessions, budget, dtype
        self.max_batch_tokens, self.policy = config.max_batch_tokens, config.cache_policy
        self.wait_timeout_s, self.window_s = config.cache_wait_s, config.batch_window_ms / 1000
        self.max_cache_bytes_per_peer = config.max_cache_bytes_per_peer or budget.total  # default: the whole budget
        self.queue: list[StepRequest] = []
        self.cohorts = CohortGate(config.cohort_wait_ms / 1000)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._computing: set[str] = set()  # sessions whose step is being computed now
        self.batches = 0  # batches run so far, and the steps in them (for stats and tests)
        self.steps = 0

    # ---- the session side ------------------------------------------------------------------------
    async def submit(
        self, session: Session, hidden: torch.Tensor, position: int,
        cohort: Cohort | None = None, destination: str | None = None,
    ) -> tuple[torch.Tensor, Cohort | None]:
        """Queue one step; once its batch has run, return its output [b, t, H] and the cohort
        of the batch's outputs that go to ``destination`` too."""
        if session.evicted:
            raise SessionEvictedError(
                f"session {session.id} was evicted to make room in this server's KV cache; replay it"
            )
        if session.generation != self._generation():
            raise SessionLostError(f"this server moved to other blocks; session {session.id} is gone")
        future = asyncio.get_running_loop().create_future()
        self.cohorts.arrived(cohort)
        self.queue.append(StepRequest(session, hidden, position, future, time.monotonic(), cohort, destination))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    def release(self, session: Session) -> None:
        """The session is closed: give its cache back (after its step, if one is queued or running)."""
        session.closed = True
        if session.id not in self._computing and all(r.session is not session for r in self.queue):
            self._free(session)
        self._wake.set()  # room may have come free for waiting steps

    def _free(self, session: Session) -> None:
        if session.kv is not None:
            self.budget.give_back(session.kv.free())
            session.kv = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for request in self.queue:
            if not request.future.done():
                request.future.set_exception(ServerBusyError("this server is shutting down; use another one"))
        self.queue.clear()

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self._computing)

    # ---- the scheduler ---------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
            if self.window_s:
                await self._gather()
            await self._gather_cohorts()
            batch = self._select()
            if not batch:  # everything queued waits for cache memory
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.05)
                except TimeoutError:
                    pass
                continue
            self._computing = {r.session.id for r in batch}
            try:
                outputs = await loop.run_in_executor(self.executor, self._compute, batch)
            except Exception as e:
                log.exception("batched step failed")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(e if isinstance(e, CorollaError) else _internal(e))
                continue
            finally:
                self._computing = set()
                for request in batch:  # closed while its step ran: its cache goes back now
                    if request.session.closed:
                        self._free(request.session)
            cohorts = next_cohorts([r.destination for r in batch])
            for request, out, cohort in zip(batch, outputs, cohorts):
                if not request.future.done():
                    request.future.set_result((out, cohort))

    def _ready(self, request: StepRequest) -> bool:
        return self.cohorts.ready(request.cohort, limit=len(self.sessions))

    async def _gather_cohorts(self) -> None:
        """While no queued step is ready, wait (a few ms at most) for the rest of their cohorts."""
        while self.queue and not any(self._ready(r) for r in self.queue):
            left = self.cohorts.wait_s_for((r.cohort for r in self.queue), limit=len(self.sessions))
            if left <= 0 or not await self._woken_within(left):
                return

    async def _gather(self) -> None:
        """Wait up to the window for the steps of the other sessions that enter the swarm here.

        Only a session's first server waits (where its client sends each step); the servers
        after it get whole batches pushed at once and never wait, so two servers cannot end
        up waiting for each other's sessions.
        """
        deadline = time.monotonic() + self.window_s
        while True:
            queued = sum(1 for r in self.queue if r.session.push_from is None)
            if not queued or queued >= self._entry_sessions_in_flight():
                return
            left = deadline - time.monotonic()
            if left <= 0 or not await self._woken_within(left):
                return

    async def _woken_within(self, timeout_s: float) -> bool:
        """Wait for the next submit or release; False if none came within ``timeout_s``."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _entry_sessions_in_flight(self) -> int:
        """Sessions entering here that stepped in the last second: their next step is near."""
        now = time.monotonic()
        return sum(1 for s in self.sessions.all()
                   if s.push_from is None and now - s.last_used < 1.0 and not s.evicted)

    def _select(self) -> list[StepRequest]:
        """The next batch: decode steps, then prefill, within the token and cache budgets."""
        now = time.monotonic()
        known = {r.session.peer: self._known(r.session.peer) for r in self.queue}
        order = sorted(self.queue, key=lambda r: (not known[r.session.peer], r.hidden.shape[1] > 1, r.since))
        batch: list[StepRequest] = []
        tokens = strangers = 0
        busy = {r.session.id for r in self.queue}
        for request in order:
            if request.session.closed:  # its client is gone
                self.queue.remove(request)
                self._free(request.session)
                if not request.future.done():
                    request.future.cancel()
                continue
            if batch and tokens + request.tokens > self.max_batch_tokens:
                continue
            stranger = not known[request.session.peer]
            if batch and stranger and strangers + request.tokens > self.new_peer_batch_tokens:
                continue
            if not self._ready(request):  # part of a cohort still coming in: the next batch
                continue
            error = self._make_room(request, busy)
            if error is None:
                batch.append(request)
                tokens += request.tokens
                strangers += request.tokens if stranger else 0
                self.queue.remove(request)
            elif error is not _WAIT or now - request.since > self.wait_timeout_s:
                self.queue.remove(request)
                if not request.future.done():
                    request.future.set_exception(error if error is not _WAIT else self._busy_error())
        return batch

    def _make_room(self, request: StepRequest, busy: set[str]):
        """Reserve the bytes this step's cache needs; None when done, else an error or _WAIT."""
        session = request.session
        if session.evicted:
            return SessionEvictedError(f"session {session.id} was evicted from this server's KV cache; replay it")
        batch = request.hidden.shape[0]
        if session.kv is None:
            layout = self._span().kv_layout(self.dtype)
            session.kv = SessionKV(layout, session.first, session.last, batch, session.max_length)
        kv = session.kv
        request.capacity = kv.capacity_for(request.position + request.hidden.shape[1])
        needed = (request.capacity - kv.capacity) * kv.token_bytes
        if needed <= 0:
            return None
        held = self.sessions.cache_bytes(session.peer)
        if held + needed > self.max_cache_bytes_per_peer:
            return ServerBusyError(
                f"peer {session.peer} would hold {held + needed} bytes of KV cache here, more than the per-peer "
                f"limit of {self.max_cache_bytes_per_peer}"
            )
        if needed > self.budget.total:
            return ServerBusyError(f"this session needs {needed} bytes of KV cache, more than this server has")
        while not self.budget.try_take(needed):
            if self.policy != "evict-lru" or not self._evict_one(busy | {session.id}):
                return _WAIT
        return None

    def _evict_one(self, keep: set[str]) -> bool:
        """Drop the least recently used idle session's cache; False if none can go."""
        idle = [s for s in self.sessions.all()
                if s.id not in keep and s.kv is not None and s.kv.capacity and not s.evicted]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_used)
        victim.evicted = True
        self._free(victim)
        log.info("evicted session %s (idle %.1f s) to make room", victim.id, time.monotonic() - victim.last_used)
        return True

    def _busy_error(self) -> ServerBusyError:
        return ServerBusyError(
            f"this server's KV cache is full ({self.budget.used} of {self.budget.total} bytes in use) and no room "
            f"came free within {self.wait_timeout_s:g} s; try another server"
        )

    # ---- the compute thread ----------------------------------------------------------------------
    def _compute(self, batch: list[StepRequest]) -> list[torch.Tensor]:
        span = self._span()
        for request in batch:
            request.session.kv.grow(request.capacity, request.session.position)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault((request.session.first, request.session.last), []).append(index)
        outputs: list[torch.Tensor | None] = [None] * len(batch)
        with torch.inference_mode():
            for (first, last), indices in groups.items():
                items = [(batch[i].hidden.to(self.dtype), batch[i].session.kv, batch[i].position) for i in indices]
                adapters = [batch[i].session.adapters for i in indices]  # already in the server's dtype
                for i, out in zip(indices, span.step(items, first, last, adapters)):
                    outputs[i] = out.float()
        now = time.monotonic()
        for request in batch:
            session = request.session
            session.batch_size = request.hidden.shape[0]
            session.position += request.hidden.shape[1]
            session.last_used = now
        self.batches += 1
        self.steps += len(batch)
        return outputs


_WAIT = object()  # the step waits for cache memory


def _internal(e: Exception) -> CorollaError:
    from corolla.errors import ServerInternalError

    return ServerInternalError(f"inference failed on the server: {type(e).__name__}")
