"""The LM head of concurrent generations in one client, computed together.

A decode step's LM head is a read of the whole vocabulary matrix (for SmolLM2, 113 MB of fp32
for one token); threads generating at the same time (several chats, an API server's requests)
share that read: whoever finds the head idle computes every row waiting at that moment. A lone
generation never waits, except for the rest of its cohort: outputs that the last server
computed in one batch arrive a few milliseconds apart, and waiting for all of them (at most
``cohort_wait_s``) keeps the sessions in one batch for the next step too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

import torch

from corolla.protocol.cohorts import CohortGate, next_cohorts
from corolla.protocol.messages import Cohort


class _Slot:
    __slots__ = ("hidden", "cohort", "destination", "result", "next_cohort", "error", "done")

    def __init__(self, hidden: torch.Tensor, cohort: Cohort | None, destination: Hashable | None):
        self.hidden, self.cohort, self.destination = hidden, cohort, destination
        self.result = self.next_cohort = self.error = None
        self.done = False


class HeadBatcher:
    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor], cohort_wait_s: float = 0.0,
                 parts: Callable[[Hashable], int] | None = None):
        self._logits = logits
        self._cv = threading.Condition()
        self._pending: list[_Slot] = []
        self._busy = False
        self._cohorts = CohortGate(cohort_wait_s)
        self._parts = parts  # how many cohorts the rows bound for one destination are split into
        self.calls = 0  # head computations run, and rows computed (for stats and tests)
        self.rows = 0

    @property
    def waiting(self) -> int:
        """Calls queued for the next head computation."""
        with self._cv:
            return len(self._pending)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, H]`` -> logits ``[B, V]``, batched with whatever other threads wait now."""
        return self.step_logits(hidden)[0]

    def step_logits(
        self, hidden: torch.Tensor, cohort: Cohort | None = None, destination: Hashable | None = None
    ) -> tuple[torch.Tensor, Cohort | None]:
        """Logits of ``hidden`` (which arrived in ``cohort``), and the cohort of the rows of the same
        batch whose next step goes to ``destination`` too (None: no next step)."""
        slot = _Slot(hidden, cohort, destination)
        with self._cv:
            self._cohorts.arrived(cohort)
            self._pending.append(slot)
            self._cv.notify_all()  # a thread waiting for this cohort's members may go now
            while not slot.done:
                if self._busy:
                    self._cv.wait()
                    continue
                batch = [s for s in self._pending if self._cohorts.ready(s.cohort)]
                if not batch:  # only members of cohorts still coming in: wait for the rest
                    self._cv.wait(self._cohorts.wait_s_for(s.cohort for s in self._pending))
                    continue
                self._pending, self._busy = [s for s in self._pending if s not in batch], True
                self._cv.release()
                try:
                    self._compute(batch)
                finally:
                    self._cv.acquire()
                    self._busy = False
                    self._cv.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result, slot.next_cohort

    def _compute(self, batch: list[_Slot]) -> None:
        try:
            out = self._logits(torch.cat([s.hidden for s in batch]))
            self.calls += 1
            self.rows += sum(len(s.hidden) for s in batch)
            offset = 0
            for s, cohort in zip(batch, next_cohorts([s.destination for s in batch], self._parts)):
                s.result, s.next_cohort = out[offset : offset + len(s.hidden)], cohort
                offset += len(s.hidden)
        except BaseException as e:  # every waiter learns of the failure, not only this thread
            for s in batch:
                s.error = e
        for s in batch:
            s.done = True
