"""The witnesses of an inference session's checks (verified computation, see corolla.client.verify).

A witness is a session on a second server covering one hop's blocks, kept from one check to the
next: at each check it is fed only the hop's inputs since the last one (its own KV cache holds the
rest), so that a check costs the tokens since the last check, not a forward of the whole prefix.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import torch

from corolla.client.verify import Verdict
from corolla.errors import CorollaError
from corolla.swarm.routing import Hop

log = logging.getLogger(__name__)


class WitnessStream(Protocol):
    """What a witness needs of a session stream (:class:`corolla.client.hopstream.HopStream`)."""
    hop: Hop

    async def step(self, hidden: torch.Tensor, position: int) -> torch.Tensor: ...

    async def step_truncating(self, hidden: torch.Tensor, position: int) -> torch.Tensor: ...

    async def close(self) -> None: ...


@dataclasses.dataclass
class _Witness:
    """A session on a second server covering a hop's blocks, fed the hop's inputs at each check
    (only those since the last one: its own KV cache holds the rest), so that a check costs the
    tokens since the last check, not a forward of the whole prefix."""
    stream: WitnessStream
    epoch: int  # the session's chain epoch it was fed in (a rebuild changes every hop's inputs)
    fed: int = 0  # positions of the hop's inputs its cache holds


class Witnesses:
    """An inference session's witnesses, one per span of blocks, and its chain epoch.

    ``open_stream(hop)`` opens a session stream to ``hop`` (not yet connected); ``closing`` is set
    when the session closes: no witness is opened or kept after it. The witnesses are used on the
    client's loop only."""

    def __init__(self, client, open_stream: Callable[[Hop], WitnessStream], closing: threading.Event):
        self.client = client
        self._open_stream = open_stream
        self._closing = closing
        self._by_span: dict[tuple[int, int], _Witness] = {}
        self.epoch = 0  # chain rebuilds so far: witnesses fed before the last one are stale

    def new_epoch(self) -> None:
        """Every hop's inputs are computed again (the chain was rebuilt): the witnesses' caches are stale."""
        self.epoch += 1

    async def check(self, jobs, spans: set[tuple[int, int]], epoch: int) -> list[Verdict]:
        """Each job's hop checked on a witness (the one kept for its span if it may still serve,
        else a new one on the first candidate that answers): the witness computes the hop's inputs
        since its last check and its answers are compared with the hop's for those positions."""
        verdicts = []
        try:
            for span in [span for span in self._by_span if span not in spans]:  # the chain was re-routed
                await self._drop(span)
            for hop, hidden, outputs, candidates in jobs:
                answer = await self._answer(hop, hidden, candidates, epoch)
                if answer is None:
                    continue
                witness, start, theirs = answer
                verifier = witness.stream.hop.peer_id
                verdict = await self.client.judge(hop, hidden, outputs[:, start:], verifier, theirs,
                                                  [c for c in candidates if c.peer_id != verifier])
                verdicts.append(verdict)
                if verdict.agreed:
                    witness.fed = hidden.shape[1]
                else:  # one of the two computed wrong (or the dispute stays open): no later check trusts it
                    await self._drop((hop.start, hop.end))
        except BaseException:
            await self.drop_all()
            raise
        if self._closing.is_set():  # closed meanwhile: no witness outlives the session
            await self.drop_all()
        return verdicts

    async def _answer(self, hop: Hop, hidden: torch.Tensor, candidates,
                      epoch: int) -> tuple[_Witness, int, torch.Tensor] | None:
        """(witness, start, its outputs for positions ``start:``) for ``hop`` whose inputs so far
        are ``hidden``; None when no candidate answered or nothing is new since the last check."""
        span, total = (hop.start, hop.end), hidden.shape[1]
        allowed = {c.peer_id for c in candidates}
        witness = self._by_span.get(span)
        if witness is not None and (witness.stream.hop.peer_id not in allowed or witness.epoch != epoch):
            await self._drop(span)
            witness = None
        if witness is not None:
            start = min(witness.fed, total)
            if start == total:
                return None
            try:
                return witness, start, await self._feed(witness, hidden, start)
            except CorollaError as e:  # gone, evicted, busy: a new witness (its replay costs a prefill)
                log.debug("witness %s failed: %s: %s", witness.stream.hop.peer_id, type(e).__name__, e)
                await self._drop(span)
        for record in candidates:
            if self._closing.is_set():
                return None
            witness = self._by_span[span] = _Witness(self._open_stream(Hop(record.peer_id, *span)), epoch)
            try:
                return witness, 0, await self._feed(witness, hidden, 0)
            except CorollaError as e:
                log.debug("verifier %s did not answer: %s: %s", record.peer_id, type(e).__name__, e)
                await self._drop(span)
        return None

    async def _feed(self, witness: _Witness, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """``hidden[:, start:]`` through the witness (rolled back to ``start`` first if its cache
        holds more: tokens dropped since, e.g. rejected drafts), in chunks; its outputs."""
        chunk = max(1, self.client.config.max_chunk_tokens // hidden.shape[0])
        outs, position = [], start
        for x in hidden[:, start:].split(chunk, dim=1):
            if position < witness.fed:
                outs.append(await witness.stream.step_truncating(x, position))
            else:
                outs.append(await witness.stream.step(x, position))
            position += x.shape[1]
            witness.fed = position
        return torch.cat(outs, dim=1)

    async def _drop(self, span: tuple[int, int]) -> None:
        witness = self._by_span.pop(span, None)
        if witness is not None:
            try:
                await witness.stream.close()
            except Exception as e:  # already broken
                log.debug("closing the witness stream to %s failed: %s", witness.stream.hop.peer_id, e)

    async def drop_all(self) -> None:
        """Close every witness's session."""
        for span in list(self._by_span):
            await self._drop(span)
