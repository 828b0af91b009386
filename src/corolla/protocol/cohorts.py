"""Cohorts: steps of concurrent sessions that travel the chain together.

A batch of steps leaves a server (or the client's LM head) at one moment; the steps bound for
the same receiver are tagged as one :class:`~corolla.protocol.messages.Cohort`. The receiver
waits a few milliseconds at most for the rest of a cohort before it computes, so concurrent
sessions keep moving through the chain as one batch instead of splitting into ever smaller
ones (a lone first arrival would otherwise start a batch of one while the others queue).
Cohorts merge whenever two of them are queued together. They are a hint only: a member that
never comes (its generation ended, a push was refused) costs the others one short wait.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable, Hashable, Iterable, Sequence

from corolla.protocol.messages import Cohort

_KEEP = 1024  # cohorts remembered before old ones are dropped


class CohortGate:
    """Counts the arrived members of each cohort and says how long to wait for the rest."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic):
        self.wait_s, self._clock = wait_s, clock
        self._seen: dict[str, list[float]] = {}  # id -> [size, arrived, deadline]

    def arrived(self, cohort: Cohort | None) -> None:
        if cohort is None or self.wait_s <= 0:
            return
        entry = self._seen.get(cohort.id)
        if entry is None:
            now = self._clock()
            if len(self._seen) >= _KEEP:  # stragglers of long-gone cohorts need no entry
                self._seen = {k: e for k, e in self._seen.items() if e[2] > now - 1.0}
            entry = self._seen[cohort.id] = [cohort.size, 0, now + self.wait_s]
        entry[1] += 1

    def ready(self, cohort: Cohort | None, limit: int | None = None) -> bool:
        """Whether a member of ``cohort`` may be computed now: its cohort is complete or late."""
        return self.wait_s_for((cohort,), limit) <= 0

    def wait_s_for(self, cohorts: Iterable[Cohort | None], limit: int | None = None) -> float:
        """Seconds to wait for missing members of these cohorts; 0 when all are complete or late.

        ``limit`` caps a cohort's size (a server passes its open sessions: more cannot come).
        """
        now, longest = self._clock(), 0.0
        for cohort in cohorts:
            entry = self._seen.get(cohort.id) if cohort is not None else None
            if entry is None:
                continue
            size = entry[0] if limit is None else min(entry[0], limit)
            if entry[1] < size:
                longest = max(longest, entry[2] - now)
        return max(longest, 0.0)


def next_cohorts(
    destinations: Sequence[Hashable | None], parts: Callable[[Hashable], int] | None = None
) -> list[Cohort | None]:
    """New cohorts for a batch's members, by destination (``None``: no next step).

    The members bound for one destination form one cohort, or ``parts(destination)`` cohorts of
    at least two (micro-batches: while the next server computes one, the one after it computes
    another, instead of all of them waiting for a single batch to pass through each in turn).
    """
    members: dict[Hashable, list[int]] = collections.defaultdict(list)
    for index, d in enumerate(destinations):
        if d is not None:
            members[d].append(index)
    out: list[Cohort | None] = [None] * len(destinations)
    for d, indices in members.items():
        count = max(1, min(parts(d) if parts else 1, len(indices) // 2))
        for part in range(count):
            group = indices[part::count]
            if len(group) >= 2:
                cohort = Cohort(id=secrets.token_hex(8), size=len(group))
                for index in group:
                    out[index] = cohort
    return out
