"""The LM head of concurrent generations in one client, computed together.

A decode step's LM head is a read of the whole vocabulary matrix (for SmolLM2, 113 MB of fp32
for one token); threads generating at the same time (several chats, an API server's requests)
share that read: whoever finds the head idle computes every row waiting at that moment. A lone
generation never waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


class _Slot:
    __slots__ = ("hidden", "result", "error", "done")

    def __init__(self, hidden: torch.Tensor):
        self.hidden, self.result, self.error, self.done = hidden, None, None, False


class HeadBatcher:
    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor]):
        self._logits = logits
        self._cv = threading.Condition()
        self._pending: list[_Slot] = []
        self._busy = False
        self.calls = 0  # head computations run, and rows computed (for stats and tests)
        self.rows = 0

    @property
    def waiting(self) -> int:
        """Calls queued for the next head computation."""
        with self._cv:
            return len(self._pending)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, H]`` -> logits ``[B, V]``, batched with whatever other threads wait now."""
        slot = _Slot(hidden)
        with self._cv:
            self._pending.append(slot)
            while not slot.done:
                if self._busy:
                    self._cv.wait()
                    continue
                batch, self._pending, self._busy = self._pending, [], True
                self._cv.release()
                try:
                    self._compute(batch)
                finally:
                    self._cv.acquire()
                    self._busy = False
                    self._cv.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _compute(self, batch: list[_Slot]) -> None:
        try:
            out = self._logits(torch.cat([s.hidden for s in batch]))
            self.calls += 1
            self.rows += sum(len(s.hidden) for s in batch)
            offset = 0
            for s in batch:
                s.result = out[offset : offset + len(s.hidden)]
                offset += len(s.hidden)
        except BaseException as e:  # every waiter learns of the failure, not only this thread
            for s in batch:
                s.error = e
        for s in batch:
            s.done = True
