"""RPC handlers of a server: parse, validate, compute on the compute thread, answer.

Every failure of a request becomes a typed error in the response metadata; it ends only that
request's stream, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import torch
from hivemind.p2p import P2PContext
from hivemind.proto import runtime_pb2

from corolla.errors import (
    BadRequestError,
    CorollaError,
    RemoteCallError,
    ServerBusyError,
    ServerInternalError,
    SessionEvictedError,
    TrainingUnsupportedError,
    UnknownAdapterError,
    UnknownSessionError,
)
from corolla.models.adapters import BlockAdapters, unpack
from corolla.models.registry import Span
from corolla.protocol.messages import (
    AdapterSpec,
    BackwardMeta,
    Cohort,
    ErrorInfo,
    ForwardMeta,
    InferenceMeta,
    PushMeta,
    PushTarget,
    ResponseMeta,
    decode_meta,
    encode_meta,
)
from corolla.protocol.tensors import decode, encode, from_wire, to_wire
from corolla.server.batching import Batcher
from corolla.server.config import ServerConfig
from corolla.server.kv import CacheBudget
from corolla.server.limits import PeerLimits
from corolla.server.priority import PriorityExecutor
from corolla.server.push import PushLinks
from corolla.server.sessions import SessionTable, check_hidden, check_step, truncate
from corolla.server.training import Graph, TrainingRunner

log = logging.getLogger(__name__)

INFO_TTL_S = 0.2  # an rpc_info answer is at most this old (and as fresh as its sessions and steps)


async def _read_into(requests: AsyncIterator[runtime_pb2.ExpertRequest], inbox: asyncio.Queue) -> None:
    """Move a stream's requests into ``inbox``; ``("end",)`` when the client closes it or it breaks."""
    try:
        async for request in requests:
            inbox.put_nowait(("request", request))
    except Exception as e:  # a broken connection ends the session like a close
        log.debug("inference stream ended: %s: %s", type(e).__name__, e)
    finally:
        inbox.put_nowait(("end",))


async def _until_client_closes(inbox: asyncio.Queue, timeout_s: float = 5.0) -> None:
    """After answering with an error, let the client close its side before we close ours.

    Closing first races with the client's end-of-stream write: its transport then fails with a
    broken pipe and drops our (already delivered) error, so the client would see a lost
    connection instead of the typed error.
    """
    try:
        async with asyncio.timeout(timeout_s):
            while (await inbox.get())[0] != "end":
                pass  # whatever else arrives after the error is ignored
    except TimeoutError:
        pass


def _codec_tensors(codec: str | None) -> int:
    """How many wire tensors one hidden-states tensor takes in ``codec``."""
    return 2 if codec == "int8" else 1


def _push_failure(peer_id: str, e: Exception) -> ErrorInfo:
    log.debug("push to %s failed: %s: %s", peer_id, type(e).__name__, e)
    reason = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
    return ErrorInfo(code=RemoteCallError.__name__, message=f"push to {peer_id} failed: {reason}"[:4096])


def error_response(err: CorollaError) -> runtime_pb2.ExpertResponse:
    meta = ResponseMeta(error=ErrorInfo(code=err.code, message=str(err)[:4096]))
    return runtime_pb2.ExpertResponse(metadata=encode_meta(meta))


class BlockHandlers:
    """Implements :class:`corolla.protocol.rpc.BlockRPC` for one loaded span."""

    def __init__(
        self,
        *,
        model_id: str,
        span: Span,
        start: int,
        end: int,
        hidden_size: int,
        dtype: torch.dtype,
        config: ServerConfig,
        info: Callable[[], bytes],
    ):
        self.model_id, self.span, self.start, self.end = model_id, span, start, end
        self.hidden_size, self.dtype, self.config = hidden_size, dtype, config
        self.sessions = SessionTable(
            max_sessions=config.max_sessions,
            max_per_peer=config.max_sessions_per_peer,
            max_length=config.max_session_length,
        )
        self._info = info
        # the encoded info, when it was made and the counts it holds: a flood of info calls (cheap to send,
        # the info is not cheap to build) is answered from it for INFO_TTL_S while no session or step changed
        self._info_cache: tuple[float, tuple, bytes] = (-1e9, (), b"")
        # one compute thread (torch already uses every core for one request), inference first
        self.compute = PriorityExecutor()
        self.training = TrainingRunner(self.compute, lambda: self.span, dtype)
        self.trainable = True  # False for quantized weights (set by the server)
        self.hosted: dict[str, BlockAdapters] = {}  # server-hosted adapters by name, local blocks, in `dtype`
        self.accepting = True  # False while draining for shutdown
        self.inflight = 0  # requests being computed right now
        self.generation = 0  # bumped when the server moves to other blocks: older sessions are lost
        self.pushes: PushLinks | None = None  # set by the server once it is on the network
        self._opening: dict[str, list[asyncio.Future]] = {}  # pushes waiting for their session to open
        self.limits = PeerLimits(config.peer_limits)  # what one peer, or the crowd of new ones, may take
        token_bytes = self.span.kv_layout(dtype).token_bytes
        self.budget = CacheBudget(config.cache_tokens * token_bytes if config.cache_tokens else config.cache_bytes)
        self.batcher = Batcher(
            config, span_getter=lambda: self.span, executor=self.compute, sessions=self.sessions, budget=self.budget,
            dtype=dtype, generation_getter=lambda: self.generation, known=self.limits.known,
        )

    def swap_span(self, span: Span, start: int, end: int) -> None:
        """Serve other blocks from now on (runs on the compute thread, between steps)."""
        self.span, self.start, self.end = span, start, end
        self.generation += 1

    @property
    def cache_tokens_left(self) -> int:
        """Tokens of this span's KV cache the budget still has room for."""
        return max(self.budget.free // max(self.span.kv_layout(self.dtype).token_bytes, 1), 0)

    # ---- helpers --------------------------------------------------------------------------
    def _local_blocks(self, model_id: str, start: int, end: int) -> tuple[int, int]:
        if model_id != self.model_id:
            raise BadRequestError(f"this server serves {self.model_id}, not {model_id}")
        if not (self.start <= start < end <= self.end):
            raise BadRequestError(f"blocks {start}:{end} are not within this server's span {self.start}:{self.end}")
        return start - self.start, end - self.start

    def _hidden(self, request: runtime_pb2.ExpertRequest, codec: str | None = None,
                tensors=None, max_tokens: int | None = None) -> torch.Tensor:
        return check_hidden(
            decode(request.tensors if tensors is None else tensors, codec),
            hidden_size=self.hidden_size,
            max_batch=self.config.max_batch_size,
            max_tokens=max_tokens or self.config.max_step_tokens,
        )

    def _adapters(self, spec: AdapterSpec | None, hosted: str | None, tensors, first: int, last: int,
                  batch: int) -> BlockAdapters | None:
        """The adapters a request asks for: the client's own (``spec`` and its tensors) or one this
        server hosts (``hosted``); None for neither."""
        if spec is not None and hosted is not None:
            raise BadRequestError("a request uses either its own adapter or a hosted one, not both")
        if hosted is not None:
            if hosted not in self.hosted:
                have = ", ".join(sorted(self.hosted)) or "none"
                raise UnknownAdapterError(f"this server does not host adapter {hosted!r} (it hosts: {have})")
            if tensors:
                raise BadRequestError(f"{len(tensors)} unexpected tensors after the hidden states")
            return self.hosted[hosted]
        if spec is None:
            if tensors:
                raise BadRequestError(f"{len(tensors)} unexpected tensors after the hidden states")
            return None
        if spec.prompt_len > self.config.max_step_tokens:
            raise BadRequestError(f"deep prompts of {spec.prompt_len} positions are more than this server's limit "
                                  f"of {self.config.max_step_tokens}")
        return unpack(spec, [from_wire(t) for t in tensors], lora_shape=self.span.lora_shape,
                      hidden_size=self.hidden_size, first=first, last=last, batch=batch,
                      max_rank=self.config.max_lora_rank)

    async def _run(self, fn, *args):
        self.inflight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.compute, fn, *args)
        finally:
            self.inflight -= 1

    async def drain(self, timeout_s: float) -> None:
        """Refuse new sessions and let the steps already running finish (up to ``timeout_s``)."""
        self.accepting = False
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self.inflight or self.batcher.pending) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    def _ok(self, out: torch.Tensor, position: int | None = None, pushed: bool = False,
            codec: str | None = None, cohort: Cohort | None = None,
            push_error: ErrorInfo | None = None, step: int | None = None) -> runtime_pb2.ExpertResponse:
        meta = ResponseMeta(position=position, pushed=pushed, cohort=cohort, push_error=push_error, step=step)
        return runtime_pb2.ExpertResponse(tensors=encode(out, codec), metadata=encode_meta(meta))

    # ---- compute (runs on the compute thread) -----------------------------------------------
    def _forward(self, hidden: torch.Tensor, first: int, last: int) -> torch.Tensor:
        with torch.inference_mode():
            return self.span(hidden.to(self.dtype), first=first, last=last).float()

    # ---- RPC ----------------------------------------------------------------------------------
    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        try:
            self.limits.admit(context.remote_id.to_base58(), _nbytes(request))
        except CorollaError as e:
            return error_response(e)
        made, state, info = self._info_cache
        now, current = time.monotonic(), self._info_state()
        if now - made > INFO_TTL_S or state != current:
            info = self._info()
            self._info_cache = (now, current, info)
        return runtime_pb2.ExpertResponse(metadata=info)

    def _info_state(self) -> tuple:
        """What an info answer counts that changes with every session and step: a cached answer is
        used only while these are the same."""
        return (len(self.sessions), self.batcher.steps, self.batcher.batches, self.inflight, self.batcher.pending,
                self.training.active)

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        try:
            self.limits.admit(context.remote_id.to_base58(), _nbytes(request))
            meta = decode_meta(request.metadata, ForwardMeta)
            first, last = self._local_blocks(meta.model_id, meta.start_block, meta.end_block)
            n = _codec_tensors(meta.compression)
            hidden = self._hidden(request, meta.compression, request.tensors[:n])
            adapters = self._adapters(meta.adapter, meta.hosted_adapter, request.tensors[n:], first, last,
                                      hidden.shape[0])
            if adapters is None:
                return self._ok(await self._run(self._forward, hidden, first, last), codec=meta.compression)
            return self._ok(await self.training.forward(hidden, adapters, first, last), codec=meta.compression)
        except CorollaError as e:
            return error_response(e)
        except Exception as e:
            log.exception("forward failed")
            return error_response(ServerInternalError(f"forward failed on the server: {type(e).__name__}"))

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Gradients for a span's input and the client's trainable tensors; nothing is kept."""
        try:
            self.limits.admit(context.remote_id.to_base58(), _nbytes(request))
            meta = decode_meta(request.metadata, BackwardMeta)
            first, last = self._local_blocks(meta.model_id, meta.start_block, meta.end_block)
            if not self.trainable:
                raise TrainingUnsupportedError("this server's weights are quantized: it runs no backward passes")
            if meta.hosted_adapter is not None:
                raise BadRequestError("backward runs with a client-owned adapter (or none), not a hosted one")
            n = _codec_tensors(meta.compression)
            if len(request.tensors) < 2 * n:
                raise BadRequestError("a backward call sends the input and the gradient of the output")
            limit = self.config.max_backward_tokens
            hidden = self._hidden(request, meta.compression, request.tensors[:n], max_tokens=limit)
            grad_out = self._hidden(request, meta.compression, request.tensors[n : 2 * n], max_tokens=limit)
            if grad_out.shape != hidden.shape:
                raise BadRequestError(f"the output gradient's shape {list(grad_out.shape)} differs from the input's "
                                      f"{list(hidden.shape)}")
            adapters = self._adapters(meta.adapter, None, request.tensors[2 * n :], first, last, hidden.shape[0])
            grad_in, grads = await self.training.backward(hidden, grad_out.float(), adapters, first, last)
            tensors = encode(grad_in, meta.compression) + [to_wire(g) for g in grads]
            return runtime_pb2.ExpertResponse(tensors=tensors, metadata=encode_meta(ResponseMeta()))
        except CorollaError as e:
            return error_response(e)
        except Exception as e:
            log.exception("backward failed")
            return error_response(ServerInternalError(f"backward failed on the server: {type(e).__name__}"))

    async def rpc_push(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        async for response in self._limited(context, self._push_stream, requests):
            yield response

    async def rpc_train(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        async for response in self._limited(context, self._train_stream, requests):
            yield response

    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        async for response in self._limited(context, self._inference_stream, requests):
            yield response

    async def _limited(self, context: P2PContext, handler, requests) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """Run a streaming ``handler`` in one of the peer's stream slots (or answer why not), its
        requests cut off unless the first comes within ``first_message_s`` (a silent stream)."""
        peer = context.remote_id.to_base58()
        try:
            slot = self.limits.stream(peer)
            slot.__enter__()
        except CorollaError as e:
            yield error_response(e)
            return
        try:
            async with contextlib.aclosing(handler(_first_within(requests, self.limits.limits.first_message_s),
                                                   peer)) as responses:
                async for response in responses:
                    yield response
        finally:
            slot.__exit__(None, None, None)

    async def _push_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], sender: str
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """Previous hops' outputs for our sessions, each queued as its session's next input.

        A push is accepted only from the peer the session's client named as the previous hop
        (``push_from``), and only for the step the session expects next; the pusher tells its
        client whether we took it, and the client sends the step itself when we did not.
        """
        async for request in requests:
            try:
                self.limits.admit(sender, _nbytes(request))
                meta = decode_meta(request.metadata, PushMeta)
                session = await self._opened(meta.session_id)
                if session is None or session.inbox is None:
                    raise UnknownSessionError(f"no open session {meta.session_id}")
                if session.push_from != sender:
                    raise BadRequestError(f"session {meta.session_id} does not accept pushes from this peer")
                hidden = self._hidden(request, meta.compression)
                if meta.step is None or meta.step not in session.done_steps:  # else: its client's copy came first
                    holds = max(session.position, session.pushed_until)  # with the pushes queued before it
                    if meta.truncate_to is None:
                        check_step(session, hidden, meta.position, holds)
                    elif meta.truncate_to > holds:
                        raise BadRequestError(f"cannot truncate session {meta.session_id} to {meta.truncate_to} "
                                              f"tokens: it holds {holds}")
                    session.pushed_until = meta.position + hidden.shape[1]
                    session.inbox.put_nowait(("push", meta.position, hidden, meta.route, meta.compression,
                                              meta.cohort, meta.step, meta.truncate_to))
                yield runtime_pb2.ExpertResponse(metadata=encode_meta(ResponseMeta(position=meta.position)))
            except CorollaError as e:
                yield error_response(e)

    async def _opened(self, session_id: str):
        """The session ``session_id``, waiting up to ``push_open_wait_s`` for it to open (its
        opening message, sent at the same time on another connection, may still be on its way)."""
        session = self.sessions.get(session_id)
        if session is not None or self.config.push_open_wait_s <= 0:
            return session
        waiter = asyncio.get_running_loop().create_future()
        self._opening.setdefault(session_id, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, self.config.push_open_wait_s)
        except TimeoutError:
            pass
        finally:
            waiters = self._opening.get(session_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._opening.pop(session_id, None)
        return self.sessions.get(session_id)

    async def _train_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], peer: str
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """One training step's forward and backward through a span on one stream, the graph kept
        in between (see ``protocol.rpc``). A graph that would not fit ``max_held_train_tokens`` is
        refused with ServerBusyError before any compute: the client then uses ``forward`` and the
        stateless ``backward`` (which recomputes)."""
        inbox: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_read_into(requests, inbox))
        graph, held = None, 0
        try:
            try:
                item = await asyncio.wait_for(inbox.get(), self.config.train_hold_s)
            except TimeoutError:
                return  # a stream opened and left silent
            if item[0] == "end":
                return
            request = item[1]
            meta = decode_meta(request.metadata, ForwardMeta)
            first, last = self._local_blocks(meta.model_id, meta.start_block, meta.end_block)
            if not self.trainable:
                raise TrainingUnsupportedError("this server's weights are quantized: it runs no backward passes")
            if meta.hosted_adapter is not None:
                raise BadRequestError("training runs with a client-owned adapter (or none), not a hosted one")
            n = _codec_tensors(meta.compression)
            limit = self.config.max_backward_tokens
            hidden = self._hidden(request, meta.compression, request.tensors[:n], max_tokens=limit)
            adapters = self._adapters(meta.adapter, None, request.tensors[n:], first, last, hidden.shape[0])
            held = hidden.shape[0] * hidden.shape[1] * (last - first)
            if self.training.held_tokens + held > self.config.max_held_train_tokens:
                held = 0
                raise ServerBusyError("no room to keep another training graph here; use forward and backward")
            self.training.held_tokens += held
            graph = Graph(self.training, adapters)
            yield self._ok(await graph.forward(hidden, first, last), codec=meta.compression)
            try:
                item = await asyncio.wait_for(inbox.get(), self.config.train_hold_s)
            except TimeoutError:
                raise SessionEvictedError(f"no gradient came within {self.config.train_hold_s:g} s; "
                                          "the graph is gone: use the stateless backward") from None
            if item[0] == "end":
                return
            grad_out = self._hidden(item[1], meta.compression, item[1].tensors[:n], max_tokens=limit)
            if grad_out.shape != hidden.shape or len(item[1].tensors) != n:
                raise BadRequestError(f"the second message of a training call is the output's gradient, "
                                      f"{list(hidden.shape)}, alone")
            grad_in, grads = await graph.backward(grad_out.float())
            tensors = encode(grad_in, meta.compression) + [to_wire(g) for g in grads]
            yield runtime_pb2.ExpertResponse(tensors=tensors, metadata=encode_meta(ResponseMeta()))
            await _until_client_closes(inbox)
        except CorollaError as e:
            yield error_response(e)
            await _until_client_closes(inbox)
        except Exception as e:
            log.exception("training call failed")
            yield error_response(ServerInternalError(f"training failed on the server: {type(e).__name__}"))
            await _until_client_closes(inbox)
        finally:
            reader.cancel()
            self.training.held_tokens -= held
            if graph is not None:
                graph.free()

    async def _push(self, route: tuple[PushTarget, ...], out: torch.Tensor, position: int, codec: str | None,
                    cohort: Cohort | None, step: int | None, truncate_to: int | None):
        """Send our output of the step at ``position`` to the next hop. Returns (why it could not
        be sent, for the client, which then sends the step itself; or None) and the coroutine of
        its acknowledgement, whose failure, if any, the client must hear of later."""
        target, *rest = route
        request = runtime_pb2.ExpertRequest(
            uid=self.model_id, tensors=encode(out, codec),
            metadata=encode_meta(PushMeta(session_id=target.session_id, position=position, route=tuple(rest) or None,
                                          compression=codec, cohort=cohort, step=step, truncate_to=truncate_to)),
        )
        try:
            return None, await self.pushes.push(target.peer_id, request, self.config.push_timeout_s)
        except Exception as e:  # the connection failed or the send timed out
            return _push_failure(target.peer_id, e), None

    async def _acknowledged(self, ack, peer_id: str) -> ErrorInfo | None:
        """None once the next hop took the push, else why not."""
        try:
            meta = await ack
        except Exception as e:  # the connection failed or the acknowledgement timed out
            return _push_failure(peer_id, e)
        if meta.error is not None:
            log.debug("push to %s refused: %s", peer_id, meta.error.message)
        return meta.error

    async def _watch_push(self, ack, peer_id: str, step: int, inbox: asyncio.Queue) -> None:
        """Await a push's acknowledgement after the step was answered; a failure goes to the client
        as a notice (through ``inbox``, so it leaves in order on the session's stream)."""
        error = await self._acknowledged(ack, peer_id)
        if error is not None:
            inbox.put_nowait(("notice", step, error))

    async def _inference_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], peer: str
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """One session. Steps come from the client or, pushed, from the previous hop; each step
        is answered to the client once, and pushed on along the route the client gave."""
        session = None
        inbox: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_read_into(requests, inbox))
        watches: set[asyncio.Task] = set()  # acknowledgements of pushes already answered
        try:
            while True:
                try:
                    item = await asyncio.wait_for(inbox.get(), self.config.session_idle_timeout_s)
                except TimeoutError:  # the client left the stream idle for too long
                    if session is not None:
                        yield error_response(SessionEvictedError(
                            f"session {session.id} was idle for {self.config.session_idle_timeout_s:g} s and expired; "
                            "replay it"))
                    return
                if item[0] == "end":
                    return  # the client closed the stream
                try:
                    if item[0] == "notice":
                        _, step, error = item
                        yield runtime_pb2.ExpertResponse(metadata=encode_meta(
                            ResponseMeta(step=step, notice=True, push_error=error)))
                        continue
                    if item[0] == "push":
                        _, position, hidden, route, codec, cohort, step, truncate_to = item
                        if step is not None and step in session.done_steps:
                            continue  # the client's own copy of this step came first
                        if truncate_to is not None:
                            if truncate_to > session.position:
                                continue  # cannot be this session's next step
                            truncate(session, truncate_to)
                        elif position != session.position:
                            continue  # the client's own copy of this step came first
                        if step is None:
                            session.pushed = {p for p in session.pushed if p > position - 8} | {position}
                    else:
                        request = item[1]
                        self.limits.admit(peer, _nbytes(request))
                        meta = decode_meta(request.metadata, InferenceMeta)
                        if session is None:
                            if meta.open is None:
                                raise UnknownSessionError(
                                    "no session is open on this stream: the first step must open one")
                            if not self.accepting:
                                raise ServerBusyError("this server is shutting down; use another one")
                            opening = meta.open
                            first, last = self._local_blocks(opening.model_id, opening.start_block, opening.end_block)
                            self.limits.check_new_session(peer, self.sessions.count(
                                lambda other: not self.limits.known(other.peer)))
                            session = self.sessions.open(meta.open, peer, first, last, self.generation)
                            session.inbox = inbox
                        elif meta.open is not None:
                            raise BadRequestError(f"session {session.id} is already open on this stream")
                        session.push_from = meta.push_from
                        for waiter in self._opening.pop(session.id, []) if meta.open is not None else ():
                            if not waiter.done():
                                waiter.set_result(None)
                        if meta.open_only:
                            if request.tensors:
                                raise BadRequestError("a message that only opens a session carries no tensors")
                            adapters = self._adapters(None, meta.open.hosted_adapter, (), session.first,
                                                      session.last, 1)
                            session.adapters = adapters.to(self.dtype) if adapters is not None else None
                            continue
                        step, truncate_to = meta.step, meta.truncate_to
                        if step is not None and step in session.done_steps:
                            continue  # computed from its push already, and answered
                        if (step is None and truncate_to is None and meta.position in session.pushed
                                and meta.position < session.position):
                            continue  # a push that timed out for its sender still reached us: done already
                        codec = meta.compression
                        n = _codec_tensors(codec)
                        hidden = self._hidden(request, codec, request.tensors[:n])
                        if meta.open is not None:
                            adapters = self._adapters(meta.open.adapter, meta.open.hosted_adapter,
                                                      request.tensors[n:], session.first, session.last,
                                                      hidden.shape[0])
                            session.adapters = adapters.to(self.dtype) if adapters is not None else None
                        elif len(request.tensors) > n:
                            raise BadRequestError("adapter tensors travel only with the message that opens a session")
                        position, route, cohort = meta.position, meta.route, meta.cohort
                        if meta.truncate_to is not None:
                            truncate(session, meta.truncate_to)
                            session.pushed_until = 0  # pushes queued past the rollback are stale
                    check_step(session, hidden, position)
                    push = bool(route) and self.pushes is not None
                    out, next_cohort = await self.batcher.submit(
                        session, hidden, position, cohort, destination=route[0].peer_id if push else peer)
                    if step is not None:
                        session.done_steps = {s for s in session.done_steps if s > step - 16} | {step}
                    push_error = None
                    if push:
                        push_error, ack = await self._push(route, out, position, codec, next_cohort, step, truncate_to)
                        if ack is not None and step is None:  # an unnumbered step: answered once acknowledged
                            push_error = await self._acknowledged(ack, route[0].peer_id)
                        elif ack is not None:  # answered now; a failure is told later, by the step's number
                            watch = asyncio.create_task(self._watch_push(ack, route[0].peer_id, step, inbox))
                            watches.add(watch)
                            watch.add_done_callback(watches.discard)
                    pushed = push and push_error is None
                    self.limits.served(session.peer)
                    yield self._ok(out, session.position, pushed, codec, None if pushed else next_cohort, push_error,
                                   step)
                except CorollaError as e:
                    yield error_response(e)
                    await _until_client_closes(inbox)
                    return
                except Exception as e:
                    log.exception("inference step failed")
                    yield error_response(ServerInternalError(f"inference failed on the server: {type(e).__name__}"))
                    await _until_client_closes(inbox)
                    return
        finally:
            reader.cancel()
            for watch in list(watches):
                watch.cancel()
            if session is not None:
                self.sessions.close(session)
                self.batcher.release(session)


def _nbytes(request: runtime_pb2.ExpertRequest) -> int:
    """What a request weighs against its peer's byte rate: its tensors and metadata."""
    return len(request.metadata) + sum(len(t.buffer) for t in request.tensors)


async def _first_within(requests: AsyncIterator, timeout_s: float) -> AsyncIterator:
    """``requests``, ended at once if the first does not come within ``timeout_s`` (a peer that
    opens a stream and stays silent holds one of its stream slots, not more, and not for long)."""
    it = aiter(requests)
    try:
        first = await asyncio.wait_for(anext(it), timeout_s)
    except (TimeoutError, StopAsyncIteration):
        return
    yield first
    async for request in it:
        yield request
