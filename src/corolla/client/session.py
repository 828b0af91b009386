"""An inference session through a chain of servers, with failover that loses nothing.

Each hop of the chain is one bidirectional stream holding a KV cache on its server. The
session keeps, per hop, every input it sent; when a server fails, the session bans it,
re-routes only that hop's blocks and replays the kept inputs into the replacement, so the
caches — and therefore the output — are the same as if nothing had happened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import random
import threading

import torch

from corolla.client.hopstream import HopStream
from corolla.client.remote import SwarmClient, costs_a_retry
from corolla.client.verify import Verdict
from corolla.client.witness import Witnesses
from corolla.errors import (
    CorollaError,
    NoRouteError,
    PeerUnresponsiveError,
    RemoteCallError,
    SequenceTooLongError,
    SessionClosedError,
    SessionEvictedError,
)
from corolla.protocol.messages import (
    Cohort,
    ErrorInfo,
    PushTarget,
)
from corolla.swarm.routing import Hop

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _HopState:
    stream: HopStream
    inputs: list[torch.Tensor] = dataclasses.field(default_factory=list)  # every input sent, per step
    outputs: list[torch.Tensor] = dataclasses.field(default_factory=list)  # and the server's answer to each


def cut_steps(inputs: list[torch.Tensor], length: int) -> list[torch.Tensor]:
    """The kept inputs [B, T_i, H] cut to their first ``length`` tokens in all."""
    kept, total = [], 0
    for x in inputs:
        if total >= length:
            break
        take = min(x.shape[1], length - total)
        kept.append(x if take == x.shape[1] else x[:, :take])
        total += take
    return kept


def merge_steps(inputs: list[torch.Tensor], max_tokens: int) -> list[torch.Tensor]:
    """Consecutive inputs [B, T_i, H] joined along T into chunks of at most ``max_tokens`` x B
    tokens (an input already bigger stays alone), in order."""
    chunks: list[list[torch.Tensor]] = []
    size = 0
    for x in inputs:
        tokens = x.shape[0] * x.shape[1]
        if chunks and size + tokens <= max_tokens:
            chunks[-1].append(x)
            size += tokens
        else:
            chunks.append([x])
            size = tokens
    return [c[0] if len(c) == 1 else torch.cat(c, dim=1) for c in chunks]


def _backoff_s(failures: int) -> float:
    """No wait before the first retry (a replacement may be ready), then capped exponential."""
    return 0.0 if failures <= 1 else min(0.25 * 2 ** (failures - 2), 4.0)


class InferenceSession:
    """``step(hidden [B, T, H]) -> hidden`` through every block, keeping KV caches on servers."""

    def __init__(self, client: SwarmClient, max_length: int, adapter=None):
        """``adapter``: a client-owned :class:`~corolla.client.training.SwarmAdapter` whose remote
        tensors each server gets when the session opens there (and drops when it closes)."""
        self.client, self.max_length, self.adapter = client, max_length, adapter
        self.position = 0
        self._hops: list[_HopState] = []
        self._closed = False
        self._closing = threading.Event()  # set with _closed: ends waits for a route or a backoff at once
        self._lock = threading.Lock()  # close() may come from another thread at any moment of a step
        self.recoveries = 0  # how many times a failed server was replaced
        self.failures: list[CorollaError] = []  # what each failed step met, in order (retried)
        self.evictions = 0  # how many times a server dropped this session's cache for room (replayed)
        self.pushed_inputs = 0  # hop inputs that a server pushed to the next one (the client sent no copy)
        self.push_failures = 0  # pushes a server was asked for and reported failed (the client sent the step)
        self._broken_links: set[tuple[str, str]] = set()  # (server, next server) pairs whose push connection failed
        self._unreachable: set[str] = set()  # servers no connection could be made to (see _recover)
        self.cohort: Cohort | None = None  # the outputs that arrived with the last step's (for the LM head)
        # kept for generate(): tokens already in the servers' caches, and one sampled but not sent
        self.token_ids: torch.Tensor | None = None
        self.pending_ids: torch.Tensor | None = None
        self._rollback = False  # the next step tells every hop to truncate to `position` first
        self.truncations = 0
        self._steps = 0  # steps numbered so far (InferenceMeta.step)
        # verified computation (corolla.client.verify): the check in flight, and the sample of steps
        self._verifying: concurrent.futures.Future | None = None
        self._sample = random.Random(client.config.verify_seed)
        self.verdicts: list[Verdict] = []  # every check of this session's hops, in order
        self.rebuilds = 0  # chains rebuilt without a server found computing wrong
        # the checks' witnesses (one session per span on other servers) and the chain's epoch
        self._witnesses = Witnesses(client, lambda hop: HopStream(client, hop, max_length), self._closing)

    @property
    def steps(self) -> int:
        """Steps sent through the chain so far (a prompt pipelined in pieces is one per piece)."""
        return self._steps

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def chain(self) -> list[Hop]:
        return [h.stream.hop for h in self._hops]

    @property
    def entry_peer(self) -> str | None:
        """The server that receives this session's steps first (None before the first step)."""
        return self._hops[0].stream.hop.peer_id if self._hops else None

    def truncate(self, length: int) -> None:
        """Roll the session back to its first ``length`` positions (soft-prompt positions
        included), e.g. drafted tokens that speculative decoding rejected. Costs no round trip:
        the next step tells every server to drop what is past ``length`` before computing it, and
        the inputs kept for replay are cut to ``length`` at once, so a failover afterwards replays
        exactly what the servers keep."""
        if self._closed:
            raise SessionClosedError("this inference session is closed")
        if not 0 <= length <= self.position:
            raise ValueError(f"cannot truncate the session to {length} positions: it holds {self.position}")
        if length == self.position:
            return
        with self._lock:
            for state in self._hops:
                state.inputs[:] = cut_steps(state.inputs, length)
                state.outputs[:] = cut_steps(state.outputs, length)
        self.position = length
        self._rollback = True
        self.truncations += 1

    def step(self, hidden: torch.Tensor, cohort: Cohort | None = None) -> torch.Tensor:
        """``hidden [B, T, H]`` through every block. ``cohort``: the steps of other sessions that
        this one left the client's LM head with, for the same first server."""
        if self._closed:
            raise SessionClosedError("this inference session is closed")
        if self.position + hidden.shape[1] > self.max_length:
            raise SequenceTooLongError(
                f"session would reach {self.position + hidden.shape[1]} tokens, past its max_length {self.max_length}"
            )
        self._ensure_hops()
        pieces = self._pieces(hidden)
        if len(pieces) == 1:
            return self._step_chunk(hidden, cohort)
        if self.client.config.push and len(self._hops) > 1:
            return self._step_pipelined(pieces)
        return torch.cat([self._step_chunk(piece) for piece in pieces], dim=1)

    def _pieces(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """``hidden`` cut into the steps it travels as: chunks of at most ``max_chunk_tokens``;
        through a chain of servers that push, a prompt also into at least ``pipeline_chunks``
        pieces (of ``pipeline_min_tokens`` or more), so that the servers work on them at once."""
        cfg = self.client.config
        batch, tokens = hidden.shape[:2]
        chunk = max(1, cfg.max_chunk_tokens // batch)
        if cfg.push and len(self._hops) > 1 and cfg.pipeline_chunks > 1:
            chunk = min(chunk, max(-(-tokens // cfg.pipeline_chunks), cfg.pipeline_min_tokens))
        return list(hidden.split(chunk, dim=1))

    def _ensure_hops(self) -> None:
        if not self._hops:
            hops = self.client.plan(stop=self._closing)
            self._adopt(0, 0, [_HopState(HopStream(self.client, hop, self.max_length, self.adapter)) for hop in hops])

    def _step_chunk(self, hidden: torch.Tensor, cohort: Cohort | None = None) -> torch.Tensor:
        self._ensure_hops()
        failures = 0
        index, x = 0, hidden
        self._steps += 1  # the step's number: the same on every hop, and when it is retried after a failure
        while True:
            x, failed, error = self.client.loop.run(self._run_chain(
                x, index, cohort if index == 0 else None, self._steps, self.position, self._rollback))
            if self._closed:  # what failed was our own close (from another thread): not the server's fault
                raise SessionClosedError("this inference session was closed during a step")
            if failed is None:
                self.position += hidden.shape[1]
                self._rollback = False
                self._check()
                return x
            failures = self._recover(failed, error, failures)
            index = failed

    def _step_pipelined(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """Every piece sent to the first server at once, each pushed on along the chain as soon
        as a server computed it: the servers compute different pieces at the same time (prefill
        pipelining). Should a server fail, what every hop finished is kept, the hops that went
        further are rolled back by the next step, and the rest goes piece by piece."""
        first = self._steps + 1
        self._steps += len(pieces)
        outs, failed, error = self.client.loop.run(self._run_pipeline(pieces, first))
        if self._closed:
            raise SessionClosedError("this inference session was closed during a step")
        self.position += sum(piece.shape[1] for piece in pieces[: len(outs)])
        if failed is None:
            self._rollback = False
            self._check()
            return torch.cat(outs, dim=1)
        with self._lock:
            for state in self._hops:
                state.inputs[:] = cut_steps(state.inputs, self.position)
                state.outputs[:] = cut_steps(state.outputs, self.position)
        self._rollback = True
        self._recover(failed, error, 0)
        return torch.cat(outs + [self._step_chunk(piece) for piece in pieces[len(outs):]], dim=1)

    def _check(self) -> None:
        """After a step: rebuild the chain if it holds a server found wrong (by this session's
        checks or another's of this client); else, for a sample of the steps, start a check of
        every hop's outputs so far on other servers (in the background: the next steps go on)."""
        done = self._verifying
        if done is not None and done.done():
            self._verifying = None
            if not done.cancelled() and done.exception() is None:
                self.verdicts.extend(done.result())
            elif not done.cancelled():
                log.debug("a check of this session's outputs failed: %r", done.exception())
        if self.client.distrusted & {state.stream.hop.peer_id for state in self._hops}:
            self._rebuild()
        rate = self.client.config.verify_rate
        if self._verifying is not None or rate <= 0 or self.adapter is not None or self._sample.random() >= rate:
            return
        jobs = []
        for state in self._hops:
            hop = state.stream.hop
            candidates = self.client.verifiers(hop.peer_id, hop.start, hop.end) if state.outputs else []
            if candidates:
                self._sample.shuffle(candidates)
                jobs.append((hop, torch.cat(state.inputs, dim=1), torch.cat(state.outputs, dim=1), candidates))
        spans = {(state.stream.hop.start, state.stream.hop.end) for state in self._hops}
        if jobs:
            self._verifying = asyncio.run_coroutine_threadsafe(
                self._witnesses.check(jobs, spans, self._witnesses.epoch), self.client.loop.loop)

    def _rebuild(self) -> None:
        """A new chain for every block without the servers found wrong, its caches rebuilt from
        the first block's inputs (those the client computed itself: nothing wrong in them)."""
        bad = self.client.distrusted & {state.stream.hop.peer_id for state in self._hops}
        log.warning("rebuilding this session's chain without %s (found computing wrong)", ", ".join(sorted(bad)))
        self._witnesses.new_epoch()  # every hop's inputs are computed again: the witnesses' caches are stale
        self._replace(0, len(self._hops))
        self.rebuilds += 1

    def _recover(self, failed: int, error: CorollaError, failures: int) -> int:
        """Replace hop ``failed`` after ``error`` (replaying its inputs), retrying a replacement
        that fails too; raises when the error is not retryable or retries ran out. Returns the
        failures counted so far. A server that could not be reached at all is not counted the first
        time (a stale DHT record: it took no work; each is banned, so they run out); everything else is."""
        peer = self._hops[failed].stream.hop.peer_id
        while True:
            self.failures.append(error)
            failures += costs_a_retry(error, peer, self._unreachable)
            if not getattr(error, "retryable", False) or failures > self.client.config.max_retries:
                raise error
            if isinstance(error, SessionEvictedError):  # the server is fine: it needed the room
                log.info("server %s dropped our session (%s); replaying blocks %d:%d", peer, error,
                         *self._span(failed))
                self.evictions += 1
            else:
                log.warning("server %s failed (%s); re-routing blocks %d:%d", peer, error, *self._span(failed))
                self.client.ban(peer, slow=isinstance(error, PeerUnresponsiveError))
                if self._closing.wait(_backoff_s(failures)):
                    raise SessionClosedError("this inference session was closed while it re-routed")
            try:
                self._replace(failed)
                return failures
            except (NoRouteError, SessionClosedError):
                raise  # plan() already waited route_timeout_s for servers to appear, or we were closed
            except CorollaError as e:
                error, peer = e, getattr(e, "peer_id", peer)

    def _span(self, index: int) -> tuple[int, int]:
        hop = self._hops[index].stream.hop
        return hop.start, hop.end

    async def _open_ahead(self, index: int) -> None:
        """Open the sessions of the hops after ``index`` not yet open, all at once (with the
        stream to hop ``index``), so that the step can be pushed through them. One that fails
        to open is left to the step, which then goes to it from the client and meets the error."""
        if not self.client.config.push:
            return
        ahead = [self._hops[j].stream.open_ahead(self._hops[j - 1].stream.hop.peer_id)
                 for j in range(index + 1, len(self._hops)) if self._hops[j].stream.can_open_ahead]
        if ahead:
            await asyncio.gather(self._hops[index].stream.connect(), *ahead, return_exceptions=True)

    async def _run_pipeline(self, pieces: list[torch.Tensor], first: int):
        """Send every piece to hop 0, then read each piece's answers along the chain; returns
        the outputs of the pieces every hop finished, and where and why it stopped (or None)."""
        await self._open_ahead(0)
        route, _ = self._push_route(0)
        position, positions = self.position, []
        try:
            for k, x in enumerate(pieces):
                positions.append(position)
                await self._hops[0].stream.send(x, position, route, None, None, self._rollback and k == 0, first + k)
                position += x.shape[1]
        except CorollaError as e:
            return [], 0, e
        outs = []
        for k, x in enumerate(pieces):
            x, failed, error = await self._run_chain(x, 0, None, first + k, positions[k], self._rollback and k == 0,
                                                     sent=True)
            if failed is not None:
                return outs, failed, error
            outs.append(x)
        return outs, None, None

    async def _run_chain(self, x: torch.Tensor, index: int, cohort: Cohort | None, step: int, position: int,
                         truncate: bool, sent: bool = False):
        """Send ``x``, the step numbered ``step`` at ``position``, through hops ``index:`` (to hop
        ``index`` already if ``sent``); on failure return where it stopped. ``truncate``: every
        hop rolls the session back to ``position`` first.

        With ``ClientConfig.push`` each request names the hops after it (their open sessions),
        and a server pushes its output straight to the next one, which starts computing at once;
        the client only reads each hop's output (kept for replay) and sends a step itself where
        a push did not happen (a hop just opened or replaced, a push refused or lost). A server
        answers as soon as its push is sent; should the push then fail, its notice (matched by
        ``step``) comes while the client waits for the next hop's answer, which cannot come.
        """
        if not sent:
            await self._open_ahead(index)
        pushed = False
        for i in range(index, len(self._hops)):
            state = self._hops[i]
            answer = None
            try:
                if pushed:
                    answer, error = await self._pushed_answer(i, step)
                    if error is None:
                        self.pushed_inputs += 1
                    else:  # the push into this hop failed after all: send the step ourselves
                        self._push_failed(i - 1, error)
                        pushed = False
                if not pushed and not (sent and i == index):
                    route, push_from = self._push_route(i)
                    await state.stream.send(x, position, route, push_from, cohort, truncate=truncate, step=step)
                answer = await (answer if answer is not None else state.stream.receive(step))
            except CorollaError as e:
                return x, i, e
            finally:
                if isinstance(answer, asyncio.Future):  # not taken: the step failed before
                    answer.cancel() if not answer.done() else answer.cancelled() or answer.exception()
            if answer.push_error is not None and i + 1 < len(self._hops):
                self._push_failed(i, answer.push_error)
            state.inputs.append(x)
            state.outputs.append(answer.hidden)
            x, pushed, cohort = answer.hidden, answer.pushed, answer.cohort
        self.cohort = cohort
        return x, None, None

    async def _pushed_answer(self, i: int, step: int) -> tuple[asyncio.Future, ErrorInfo | None]:
        """Hop ``i``'s answer to the step hop ``i - 1`` pushed to it (a future), and None; or, if
        hop ``i - 1`` says first that the push failed (or its stream ended), why."""
        answer = asyncio.ensure_future(self._hops[i].stream.receive(step))
        failure = asyncio.ensure_future(self._hops[i - 1].stream.push_failure(step))
        try:
            await asyncio.wait({answer, failure}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            answer.cancel()  # a read left running would take a later step's answer
            raise
        finally:
            failure.cancel()
        if answer.done() or failure.cancelled():
            return answer, None
        return answer, failure.result()

    def _push_failed(self, index: int, error: ErrorInfo) -> None:
        """Hop ``index`` says its push to the next hop did not happen: we send that step ourselves.
        A lost connection between the two (not a refusal) means that link should not carry this
        session's steps again: the next hop may be dead (sending to it shows at once) or just
        unreachable from there (a NAT), and then relaying is the only way."""
        self.push_failures += 1
        sender, receiver = self._hops[index].stream.hop.peer_id, self._hops[index + 1].stream.hop.peer_id
        log.info("server %s could not push to %s (%s: %s); sending the step ourselves", sender, receiver,
                 error.code, error.message)
        if error.code == RemoteCallError.__name__:
            self._broken_links.add((sender, receiver))

    def _push_route(self, index: int) -> tuple[tuple[PushTarget, ...], str | None]:
        """The open hops after ``index`` (up to the first not yet open or behind a broken link)
        and the hop before it."""
        if not self.client.config.push:
            return (), None
        route = []
        sender = self._hops[index].stream.hop.peer_id
        for state in self._hops[index + 1 :]:
            target = state.stream.push_target
            if target is None or (sender, target.peer_id) in self._broken_links:
                break
            route.append(target)
            sender = target.peer_id
        return tuple(route), self._hops[index - 1].stream.hop.peer_id if index > 0 else None

    def _replace(self, index: int, last: int | None = None) -> None:
        """Route around hops ``index:last`` (default: hop ``index`` alone) and replay the first
        one's inputs into the replacement hops."""
        last = index + 1 if last is None else last
        old = self._hops[index]
        for state in self._hops[index:last]:
            self.client.loop.run(state.stream.close())
        start, end = self._span(index)[0], self._span(last - 1)[1]
        hops = self.client.plan(start, end, stop=self._closing)
        new = [_HopState(HopStream(self.client, hop, self.max_length, self.adapter)) for hop in hops]
        try:
            self.client.loop.run(self._replay(new, old.inputs))
        except CorollaError:
            for state in new:
                self.client.loop.run(state.stream.close())
            if self._closed:
                raise SessionClosedError("this inference session was closed during a replay") from None
            raise
        self._adopt(index, last, new)
        self.recoveries += 1

    def _adopt(self, start: int, end: int, hops: list[_HopState]) -> None:
        """Put ``hops`` in place of ``self._hops[start:end]`` — unless the session was closed
        meanwhile: then close them too (none may outlive the session on its server)."""
        with self._lock:
            if not self._closed:
                self._hops[start:end] = hops
                return
        for state in hops:
            self.client.loop.run(state.stream.close())
        raise SessionClosedError("this inference session was closed while it re-routed")

    async def _replay(self, hops: list[_HopState], inputs: list[torch.Tensor]) -> None:
        """Re-send every kept input to rebuild the caches, consecutive steps merged into chunks
        (one forward for many decode steps instead of one each: a replay costs about a prefill,
        not a token's time per token already generated). The rebuilt cache holds the same keys and
        values, float rounding of the bigger matmuls aside — as when steps of several sessions are
        batched together."""
        position = 0
        for x in merge_steps(inputs, self.client.config.max_chunk_tokens):
            tokens = x.shape[1]
            for state in hops:
                try:
                    y = await state.stream.step(x, position)
                except CorollaError as e:
                    e.peer_id = state.stream.hop.peer_id  # so the caller bans the right server
                    raise
                state.inputs.append(x)
                state.outputs.append(y)
                x = y
            position += tokens

    def close(self) -> None:
        """Close every hop's stream (their servers free the caches at once). Safe from any thread
        at any moment: a step running in another thread then fails with SessionClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            hops = list(self._hops)
        for state in hops:
            try:
                self.client.loop.run(state.stream.close(), timeout=5.0)
            except Exception as e:  # the client itself may be shutting down
                log.debug("closing the stream to %s failed: %s", state.stream.hop.peer_id, e)
            state.inputs.clear()
            state.outputs.clear()
        if self._verifying is not None:
            self._verifying.cancel()
        try:  # the witnesses of the checks (a check cancelled above closes those it held itself)
            self.client.loop.run(self._witnesses.drop_all(), timeout=5.0)
        except Exception as e:
            log.debug("closing the witness streams failed: %s", e)

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
