"""The client's view of the swarm: DHT reads, routing, and RPC calls to servers."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import torch
from hivemind.proto import runtime_pb2

from corolla.client.config import ClientConfig
from corolla.client.loop import LoopThread
from corolla.client.verify import Reputation, Verdict, VerifyStats, disagreement, tolerance
from corolla.errors import (
    BadRequestError,
    CorollaError,
    NoRouteError,
    PeerUnreachableError,
    PeerUnresponsiveError,
    RemoteCallError,
    SessionClosedError,
    UnknownAdapterError,
    error_from_wire,
)
from corolla.protocol.messages import (
    AdapterSpec,
    BackwardMeta,
    ForwardMeta,
    ResponseMeta,
    ServerState,
    decode_meta,
    encode_meta,
)
from corolla.protocol.rpc import RpcStream, remote_call, stub_for
from corolla.protocol.tensors import decode, encode, from_wire, to_wire
from corolla.swarm.announce import report_wrong
from corolla.swarm.dht import start_dht
from corolla.swarm.discovery import ServerRecord, SwarmState, fetch_swarm_state_and_reports
from corolla.swarm.routing import Hop, plan_chain

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 2.0  # a routing probe (an ``info`` call) unanswered this long counts as unanswered
UNANSWERED_RTT_S = 1.0  # the round trip routing assumes for a server whose probe failed: a last resort
UNANSWERED_RETRY_S = 5.0  # when such a server is probed again
T = TypeVar("T")


def wire_tensors(tensors: Sequence[torch.Tensor]) -> list[runtime_pb2.Tensor]:
    return [to_wire(t.detach().float().contiguous()) for t in tensors]


def parse_response(response: runtime_pb2.ExpertResponse, codec: str | None = None) -> tuple[ResponseMeta, torch.Tensor]:
    """Server answer -> (metadata, tensor); a server-side error is re-raised with its own type."""
    meta = decode_meta(response.metadata, ResponseMeta)
    if meta.error is not None:
        raise error_from_wire(meta.error.code, meta.error.message)
    try:
        return meta, decode(response.tensors, codec)
    except BadRequestError as e:
        raise RemoteCallError(f"server answered with malformed tensors: {e}") from None


def costs_a_retry(error: Exception, peer_id: str, unreachable: set[str]) -> bool:
    """Whether ``error`` from ``peer_id`` counts against a client's retries: not the first time a
    peer could not be reached at all (a dead server's record: it took no work, and is banned after
    it, so such peers run out); ``unreachable`` keeps the peers met so."""
    if isinstance(error, PeerUnreachableError) and peer_id not in unreachable:
        unreachable.add(peer_id)
        return False
    return True


class SwarmClient:
    """Owns a client-mode DHT node, a P2P handle and the loop that drives RPCs."""

    def __init__(self, model_id: str, num_blocks: int, hidden_size: int, config: ClientConfig, dht=None,
                 block_hashes: tuple[str, ...] | None = None):
        """``block_hashes``: each block's short hash (:mod:`corolla.models.manifest`); servers whose
        blocks hash otherwise are left out of every chain (None: not checked)."""
        self.model_id, self.num_blocks, self.hidden_size, self.config = model_id, num_blocks, hidden_size, config
        self.block_hashes = block_hashes
        self.reputation = Reputation()
        self.distrusted: set[str] = self.reputation.distrusted(model_id)  # found wrong: never used again
        self.reported: set[str] = set()  # servers other clients reported (see corolla.client.verify)
        self.verify_stats = VerifyStats()
        self._odd_servers: set[str] = set()  # left out for their blocks' hashes (logged once each)
        self._own_dht = dht is None
        if dht is None:
            dht = start_dht(config.initial_peers, client_mode=True, models={model_id: num_blocks})
        self.dht = dht
        self.loop = LoopThread()
        self.p2p = self.loop.run(self.dht.replicate_p2p())
        self._bans: dict[str, tuple[float, float]] = {}  # peer -> (banned until, last ban length)
        self._slow: set[str] = set()  # banned for answering late (see ban)
        self._rtt: dict[str, tuple[float, float]] = {}  # peer -> (measured at, round trip seconds)
        self._state: tuple[float, SwarmState] | None = None  # (read at, state)
        self._refresh_lock, self._refreshing = threading.Lock(), False

    def with_adapter(self, name: str | None) -> SwarmClient:
        """This client routing to servers hosting adapter ``name`` (None: no hosted adapter), for
        serving several adapters at once (the API's ``MODEL:NAME``). It shares this client's DHT
        node, connections, loop, bans and round trips; only this client's ``close`` closes them."""
        view = copy.copy(self)
        view.config = dataclasses.replace(self.config, adapter=name)
        view._state = None
        view._own_dht = False
        return view

    # ---- swarm state and routing --------------------------------------------------------------
    def swarm_state(self, max_age_s: float = 0.0) -> SwarmState:
        """The swarm's state from the DHT, or a read at most ``max_age_s`` old; with ``max_age_s``
        above 0, also one up to ``state_stale_s`` old, while a fresh read goes on in the background."""
        now, state = time.monotonic(), self._state
        if state is not None and now - state[0] <= max_age_s:
            return state[1]
        if state is not None and max_age_s > 0 and now - state[0] <= self.config.state_stale_s:
            self._refresh_soon()
            return state[1]
        self._state = (now, self._read_state())
        return self._state[1]

    def _read_state(self) -> SwarmState:
        """The swarm's state, without the servers whose blocks are not this model's (a server
        loaded from other weights, announcing under this model's key)."""
        state, reports = fetch_swarm_state_and_reports(self.dht, self.model_id, self.num_blocks)
        self.reported = {peer for accused in reports.values() for peer in accused}
        if self.block_hashes is None:
            return state
        servers = tuple(s for s in state.servers
                        if s.info.block_hashes == self.block_hashes[s.info.start_block:s.info.end_block])
        odd = sorted({s.peer_id for s in state.servers} - {s.peer_id for s in servers} - self._odd_servers)
        if odd:
            self._odd_servers.update(odd)
            log.warning("left out server(s) whose blocks are not %s's: %s", self.model_id, ", ".join(odd))
        return dataclasses.replace(state, servers=servers)

    def _refresh_soon(self) -> None:
        """Read the swarm's state again in a background thread (one at a time)."""
        with self._refresh_lock:
            if self._refreshing:
                return
            self._refreshing = True

        def refresh():
            try:
                read_at = time.monotonic()
                self._state = (read_at, self._read_state())
            except Exception as e:  # closed meanwhile, or the DHT failed: the next session reads itself
                log.debug("refreshing the swarm's state failed: %s: %s", type(e).__name__, e)
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, name="corolla-swarm-refresh", daemon=True).start()

    def banned(self) -> set[str]:
        now = time.monotonic()
        return {peer for peer, (until, _) in self._bans.items() if until > now}

    def ban(self, peer_id: str, slow: bool = False) -> None:
        """Route around ``peer_id`` for a while (longer each time). ``slow``: it answered too
        late, not failed: where no other server can serve, it is used all the same."""
        _, last = self._bans.get(peer_id, (0.0, 0.0))
        length = min(last * 2, 300.0) if last else self.config.ban_s
        self._bans[peer_id] = (time.monotonic() + length, length)
        (self._slow.add if slow else self._slow.discard)(peer_id)
        self._state = None  # the swarm just changed: re-read before re-routing
        log.info("banned %s for %.0f s", peer_id, length)

    def plan(self, start: int = 0, end: int | None = None, forward_tokens: int | None = None,
             stop: threading.Event | None = None, trainable: bool = False) -> list[Hop]:
        """A chain of servers for blocks ``start:end``, waiting up to route_timeout_s for one.

        ``forward_tokens``: plan a stateless forward of that many tokens (weighs prefill speed).
        ``stop``: set from another thread, it ends the wait with SessionClosedError.
        ``trainable``: only servers that run backward passes. With ``ClientConfig.adapter``, only
        servers hosting that adapter; UnknownAdapterError at once when no server hosts it.
        """
        stop = stop or threading.Event()
        deadline = time.monotonic() + self.config.route_timeout_s
        delay, max_age_s = 0.1, self.config.state_max_age_s
        while True:
            try:
                state = self.swarm_state(max_age_s)
                banned = self.banned() | self.distrusted
                options = dict(allowed=self.config.allowed_servers, rtt_s=self.measure_rtts(state),
                               forward_tokens=forward_tokens, adapter=self.config.adapter, trainable=trainable)
                avoided = self.reported - banned if self.config.weigh_reports else set()
                # servers someone reported, then servers banned for answering late: only where no other can serve
                fallbacks = [banned | avoided, banned, (banned - self._slow) | self.distrusted]
                fallbacks = [x for i, x in enumerate(fallbacks) if x not in fallbacks[:i]]
                for excluded in fallbacks[:-1]:
                    with contextlib.suppress(NoRouteError):
                        return plan_chain(state, start, end, banned=excluded, **options)
                return plan_chain(state, start, end, banned=fallbacks[-1], **options)
            except UnknownAdapterError:
                if max_age_s == 0.0:
                    raise
                max_age_s = 0.0  # a reused read may predate the servers hosting it: decide on a fresh one
            except NoRouteError:
                max_age_s = 0.0  # wait on fresh reads
                if time.monotonic() + delay > deadline:
                    raise
                if stop.wait(delay):
                    raise SessionClosedError("closed while waiting for servers to appear") from None
                delay = min(delay * 2, 2.0)

    # ---- verified computation (corolla.client.verify) --------------------------------------------
    def verifiers(self, primary: str, start: int, end: int) -> list[ServerRecord]:
        """Online servers other than ``primary`` that compute blocks ``start:end`` the way it
        should (the same quantisation), trusted, not banned and allowed (``allowed_servers``),
        from the last read of the swarm."""
        state = self._state[1] if self._state is not None else self.swarm_state(self.config.state_max_age_s)
        infos = {s.peer_id: s.info for s in state.servers}
        quant = infos[primary].quant if primary in infos else "none"
        excluded = self.banned() | self.distrusted | {primary}
        allowed = self.config.allowed_servers
        return [s for s in state.servers if s.peer_id not in excluded and s.info.state is ServerState.ONLINE
                and (allowed is None or s.peer_id in allowed)
                and s.info.start_block <= start and end <= s.info.end_block and s.info.quant == quant
                and (self.config.adapter is None or self.config.adapter in s.info.adapters)]

    def dtype_of(self, peer_id: str) -> str:
        """The precision that bounds the server's rounding: its dtype, or float16 for a server whose
        decode steps use float16 copies of its weights (--quant fp16-decode)."""
        state = self._state[1] if self._state is not None else None
        info = next((s.info for s in state.servers if s.peer_id == peer_id), None) if state else None
        if info is None:
            return "unknown"
        return "float16" if info.quant == "fp16-decode" else info.dtype

    async def judge(self, hop: Hop, hidden: torch.Tensor, outputs: torch.Tensor, verifier: str,
                    theirs: torch.Tensor, referees: list[ServerRecord]) -> Verdict:
        """Compare ``outputs``, what ``hop``'s server answered for the last ``outputs.shape[1]``
        positions of its inputs ``hidden`` [B, T, H], with ``theirs``, what ``verifier`` answered
        for the same positions; on a disagreement ask the first of ``referees`` that answers (a
        stateless forward of ``hidden``) and distrust the server in the minority."""
        codec = self.config.compression
        tokens = outputs.shape[1]
        tol = tolerance(self.dtype_of(hop.peer_id), self.dtype_of(verifier), codec)
        verdict = Verdict(hop.start, hop.end, hop.peer_id, verifier, disagreement(outputs, theirs), tol,
                          outputs.shape[0] * tokens)
        self.verify_stats.checks += 1
        self.verify_stats.tokens_compared += verdict.tokens
        if verdict.agreed:
            self.verify_stats.worst_agreeing = max(self.verify_stats.worst_agreeing, verdict.error)
            return verdict
        self.verify_stats.disputes += 1
        log.warning("server %s and %s disagree on blocks %d:%d (relative error %.3g > %.3g): asking a third",
                    hop.peer_id, verifier, hop.start, hop.end, verdict.error, tol)
        for record in referees:
            try:
                third = (await self.call_forward(Hop(record.peer_id, hop.start, hop.end), hidden))[:, -tokens:]
            except CorollaError as e:  # busy, gone, refused: try another
                log.debug("referee %s did not answer: %s: %s", record.peer_id, type(e).__name__, e)
                continue
            verdict.referee = record.peer_id
            with_primary = disagreement(outputs, third) <= tolerance(self.dtype_of(hop.peer_id),
                                                                     self.dtype_of(record.peer_id), codec)
            with_verifier = disagreement(theirs, third) <= tolerance(self.dtype_of(verifier),
                                                                     self.dtype_of(record.peer_id), codec)
            if with_verifier and not with_primary:
                verdict.wrong = hop.peer_id
            elif with_primary and not with_verifier:
                verdict.wrong = verifier
            if verdict.wrong is not None:
                self.distrust(verdict.wrong, verdict)
            else:
                log.warning("the third server %s settles nothing on blocks %d:%d", record.peer_id, hop.start, hop.end)
            return verdict
        log.warning("no third server to settle %s vs %s on blocks %d:%d", hop.peer_id, verifier, hop.start, hop.end)
        return verdict

    def distrust(self, peer_id: str, verdict: Verdict) -> None:
        """Never use ``peer_id`` again; remember it on this machine and tell the swarm."""
        self.distrusted.add(peer_id)
        self.verify_stats.caught.append(peer_id)
        self._state = None
        log.error("server %s computed blocks %d:%d wrong (relative error %.3g, tolerance %.3g; witnesses %s, %s): "
                  "distrusted", peer_id, verdict.start, verdict.end, verdict.error, verdict.tolerance,
                  verdict.verifier, verdict.referee)
        try:
            self.reputation.record(self.model_id, peer_id, verdict)
        except OSError as e:
            log.warning("could not write the reputation file %s: %s", self.reputation.path, e)
        if self.config.report_wrong:
            try:
                report_wrong(self.dht, self.model_id, sorted(self.distrusted), wait=False)
            except Exception as e:  # the DHT may be closing: the local record stands
                log.warning("could not report %s in the DHT: %s: %s", peer_id, type(e).__name__, e)

    def measure_rtts(self, state: SwarmState, max_age_s: float = 60.0) -> dict[str, float]:
        """Round trips to online servers (an ``info`` call each), measured at most every ``max_age_s``.
        One that did not answer counts as UNANSWERED_RTT_S (routing then takes it only where nothing
        else serves: a dead server's record outlives it) and is asked again after UNANSWERED_RETRY_S."""
        now = time.monotonic()
        banned = self.banned()  # a server just found dead would only cost a probe's timeout
        stale = [s.peer_id for s in state.servers if s.info.state is ServerState.ONLINE and s.peer_id not in banned
                 and now - self._rtt.get(s.peer_id, (-1e9, 0.0))[0] > max_age_s]
        if stale:
            for peer, rtt in zip(stale, self.loop.run(self._ping_all(stale))):
                self._rtt[peer] = ((now, rtt) if rtt is not None
                                   else (now - max_age_s + UNANSWERED_RETRY_S, UNANSWERED_RTT_S))
        return {peer: rtt for peer, (_, rtt) in self._rtt.items()}

    async def _ping_all(self, peers: list[str]) -> list[float | None]:
        return await asyncio.gather(*(self._ping(p) for p in peers))

    async def _ping(self, peer_id: str, timeout_s: float = PING_TIMEOUT_S) -> float | None:
        """Round trip of an ``info`` call, or None when it fails or takes over ``timeout_s``."""
        t0 = time.perf_counter()
        try:
            await stub_for(self.p2p, peer_id).rpc_info(runtime_pb2.ExpertRequest(uid=self.model_id), timeout=timeout_s)
        except Exception:  # unreachable: routing will try it at the default cost, failover handles the rest
            return None
        return time.perf_counter() - t0

    async def answer_of(self, peer_id: str, receive: Awaitable[T]) -> T:
        """The result of ``receive`` (a read of ``peer_id``'s answer), watching the peer meanwhile.

        A peer that dies usually closes its connection, and ``receive`` fails at once. One that
        vanishes without a word (a host gone from the network, a frozen process) would leave the
        read waiting: after ``liveness_period_s`` without an answer the peer is probed with an
        ``info`` call every period, and one that does not answer a probe within
        ``liveness_timeout_s`` is given up. ``request_timeout_s`` remains for a server that
        answers probes but never the request (alive but stuck). Failures are RemoteCallErrors.
        """
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.request_timeout_s
        task = asyncio.ensure_future(receive)
        try:
            with remote_call(f"call to {peer_id}"):
                while True:
                    wait_s = max(0.0, min(cfg.liveness_period_s, deadline - loop.time()))
                    done, _ = await asyncio.wait({task}, timeout=wait_s)
                    if done:
                        return task.result()
                    if loop.time() >= deadline:
                        raise PeerUnresponsiveError(
                            f"server {peer_id} did not answer within {cfg.request_timeout_s:g} s")
                    probe = asyncio.ensure_future(self._ping(peer_id, cfg.liveness_timeout_s))
                    done, _ = await asyncio.wait({task, probe}, return_when=asyncio.FIRST_COMPLETED)
                    if task in done:
                        probe.cancel()
                        return task.result()
                    if await probe is None:
                        raise PeerUnresponsiveError(f"server {peer_id} did not answer a liveness probe within "
                                                    f"{cfg.liveness_timeout_s:g} s")
        finally:
            task.cancel()  # a no-op once it finished; a read abandoned mid-message leaves the stream unusable

    # ---- stateless calls -----------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, H] through every block (no KV cache), chunked by tokens."""
        chain = self.plan(forward_tokens=hidden.shape[0] * hidden.shape[1])
        chunk = max(1, self.config.max_chunk_tokens // hidden.shape[0])
        outs = [self.loop.run(self._forward_chain(chain, piece)) for piece in hidden.split(chunk, dim=1)]
        return torch.cat(outs, dim=1)

    async def _forward_chain(self, chain: list[Hop], hidden: torch.Tensor) -> torch.Tensor:
        for hop in chain:
            hidden = await self.call_forward(hop, hidden)
        return hidden

    async def call_forward(self, hop: Hop, hidden: torch.Tensor, adapter: AdapterSpec | None = None,
                           tensors: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``hidden`` through ``hop``'s blocks, with the adapter tensors of those blocks (if any)."""
        codec = self.config.compression
        meta = ForwardMeta(model_id=self.model_id, start_block=hop.start, end_block=hop.end,
                           compression=None if codec == "none" else codec, adapter=adapter,
                           hosted_adapter=self.config.adapter)
        request = runtime_pb2.ExpertRequest(uid=self.model_id, tensors=encode(hidden, codec) + wire_tensors(tensors),
                                            metadata=encode_meta(meta))
        call = stub_for(self.p2p, hop.peer_id).rpc_forward(request, timeout=self.config.request_timeout_s)
        response = await self.answer_of(hop.peer_id, call)
        out = parse_response(response, codec)[1]
        if out.shape != hidden.shape:
            raise RemoteCallError(f"server {hop.peer_id} answered a forward call with shape {list(out.shape)}")
        return out

    async def call_backward(self, hop: Hop, hidden: torch.Tensor, grad: torch.Tensor, adapter: AdapterSpec | None,
                            tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Gradients of ``hop``'s input and of ``tensors`` given its output's gradient ``grad``
        (the server recomputes the forward)."""
        codec = self.config.compression
        meta = BackwardMeta(model_id=self.model_id, start_block=hop.start, end_block=hop.end,
                            compression=None if codec == "none" else codec, adapter=adapter)
        request = runtime_pb2.ExpertRequest(
            uid=self.model_id, tensors=encode(hidden, codec) + encode(grad, codec) + wire_tensors(tensors),
            metadata=encode_meta(meta))
        call = stub_for(self.p2p, hop.peer_id).rpc_backward(request, timeout=self.config.request_timeout_s)
        return self._gradients(hop, await self.answer_of(hop.peer_id, call), hidden.shape, tensors)

    async def train_forward(self, hop: Hop, hidden: torch.Tensor, adapter: AdapterSpec | None,
                            tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, RpcStream]:
        """The forward half of a streaming training call: ``hop``'s output, and the open stream on
        which the server keeps the graph for :meth:`train_backward` (no recompute)."""
        codec = self.config.compression
        meta = ForwardMeta(model_id=self.model_id, start_block=hop.start, end_block=hop.end,
                           compression=None if codec == "none" else codec, adapter=adapter)
        request = runtime_pb2.ExpertRequest(uid=self.model_id, tensors=encode(hidden, codec) + wire_tensors(tensors),
                                            metadata=encode_meta(meta))
        with remote_call(f"training call to {hop.peer_id}"):
            stream = await RpcStream.open(self.p2p, hop.peer_id, "rpc_train", self.config.connect_timeout_s)
        try:
            with remote_call(f"training call to {hop.peer_id}"):
                await stream.send(request)
            out = parse_response(await self.answer_of(hop.peer_id, stream.receive()), codec)[1]
            if out.shape != hidden.shape:
                raise RemoteCallError(f"server {hop.peer_id} answered a training call with shape {list(out.shape)}")
            return out, stream
        except BaseException:
            await stream.close()
            raise

    async def train_backward(self, hop: Hop, stream: RpcStream, grad: torch.Tensor,
                             tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The backward half of a streaming training call; the stream is closed after it."""
        try:
            with remote_call(f"training call to {hop.peer_id}"):
                await stream.send(runtime_pb2.ExpertRequest(uid=self.model_id,
                                                            tensors=encode(grad, self.config.compression)))
            response = await self.answer_of(hop.peer_id, stream.receive())
            return self._gradients(hop, response, grad.shape, tensors)
        finally:
            await stream.close()

    def _gradients(self, hop: Hop, response: runtime_pb2.ExpertResponse, shape: torch.Size,
                   tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A backward answer: the input's gradient, then one per tensor sent, checked."""
        codec = self.config.compression
        meta_out = decode_meta(response.metadata, ResponseMeta)
        if meta_out.error is not None:
            raise error_from_wire(meta_out.error.code, meta_out.error.message)
        n = 2 if codec == "int8" else 1
        try:
            grad_in = decode(response.tensors[:n], codec)
            grads = [from_wire(t) for t in response.tensors[n:]]
        except BadRequestError as e:
            raise RemoteCallError(f"server {hop.peer_id} answered with malformed tensors: {e}") from None
        if grad_in.shape != shape or len(grads) != len(tensors) \
                or any(g.shape != t.shape for g, t in zip(grads, tensors)):
            raise RemoteCallError(f"server {hop.peer_id} answered a backward call with gradients of the wrong shapes")
        if not torch.isfinite(grad_in).all() or not all(torch.isfinite(g).all() for g in grads):
            raise RemoteCallError(f"server {hop.peer_id} answered a backward call with non-finite gradients")
        return grad_in, grads

    def close(self, timeout_s: float = 6.0) -> None:
        """Close the transport, the loop and (if ours) the DHT node, in about ``timeout_s`` at most:
        a process shutting down has a deadline (see corolla.shutdown)."""
        deadline = time.monotonic() + timeout_s
        left = lambda share: max(0.1, (deadline - time.monotonic()) * share)  # noqa: E731
        try:
            self.loop.run(self.p2p.shutdown(), timeout=left(0.3))
        except Exception as e:  # a daemon already gone, or slow: the rest still closes
            log.debug("closing the p2p handle failed: %s: %s", type(e).__name__, e)
        finally:
            self.loop.stop(timeout_s=left(0.5))
        if self._own_dht:
            self.dht.shutdown_timeout = left(1.0)
            self.dht.shutdown()
