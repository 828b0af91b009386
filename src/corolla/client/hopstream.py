"""One hop of an inference session: the ``rpc_inference`` stream to one server, opened ahead or with the
first step, read by a task that sorts the server's answers from its notices of failed pushes."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import torch
from hivemind.proto import runtime_pb2

from corolla.client.remote import SwarmClient, parse_response, wire_tensors
from corolla.errors import RemoteCallError
from corolla.protocol.messages import (
    Cohort,
    ErrorInfo,
    InferenceMeta,
    PushTarget,
    ResponseMeta,
    SessionOpen,
    decode_meta,
    encode_meta,
)
from corolla.protocol.rpc import RpcStream, StreamClosedError, remote_call
from corolla.protocol.tensors import encode
from corolla.swarm.routing import Hop


class HopStream:
    """One open ``rpc_inference`` stream to one server."""

    def __init__(self, client: SwarmClient, hop: Hop, max_length: int, adapter=None):
        self.client, self.hop = client, hop
        spec = adapter.spec if adapter is not None else None
        self.open_meta = SessionOpen(
            model_id=client.model_id,
            session_id=uuid.uuid4().hex,
            start_block=hop.start,
            end_block=hop.end,
            max_length=max_length,
            adapter=spec,
            hosted_adapter=client.config.adapter,
        )
        # a client-owned adapter travels once, with the message that opens the session
        self._adapter_tensors = wire_tensors(adapter.block_tensors(hop.start, hop.end)) if spec is not None else []
        self._stream: RpcStream | None = None
        # what the stream's reader (started with the stream) sorted out: answers (or the error that
        # ended the stream) in order, and notices of failed pushes by step number
        self._answers: asyncio.Queue = asyncio.Queue()
        self._notices: dict[int, ErrorInfo] = {}
        self._noticed = asyncio.Event()  # set when a notice comes or the stream ends
        self._ended: BaseException | None = None
        self._reader: asyncio.Task | None = None
        self._open_sent = False  # the message that opens the session went out on the stream
        self._closed = False  # by close(): no stream opens after it

    @property
    def push_target(self) -> PushTarget | None:
        """Where the previous hop may push its output to (once the session's opening is sent)."""
        return PushTarget(peer_id=self.hop.peer_id, session_id=self.open_meta.session_id) if self._open_sent else None

    @property
    def can_open_ahead(self) -> bool:
        """The session can be opened before its first input is known (a client-owned adapter's
        tensors travel with the first input instead)."""
        return not self._open_sent and not self._adapter_tensors

    async def open_ahead(self, push_from: str | None) -> None:
        """Open the session without a step (not answered unless it fails), so that the previous
        hop can push the first step to it: the first step then crosses the chain once instead
        of coming back to the client at every hop."""
        meta = InferenceMeta(position=0, open=self.open_meta, open_only=True, push_from=push_from)
        await self._send(runtime_pb2.ExpertRequest(uid=self.client.model_id, metadata=encode_meta(meta)))

    async def step(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        await self.send(hidden, position)
        return (await self.receive()).hidden

    async def step_truncating(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        """A step that first rolls the server's session back to ``position`` tokens."""
        await self.send(hidden, position, truncate=True)
        return (await self.receive()).hidden

    async def send(
        self, hidden: torch.Tensor, position: int, route: tuple[PushTarget, ...] = (), push_from: str | None = None,
        cohort: Cohort | None = None, truncate: bool = False, step: int | None = None,
    ) -> None:
        """``truncate``: the session on the server is rolled back to ``position`` tokens first.
        ``step``: the session's number for this step (see InferenceMeta.step)."""
        codec = self.client.config.compression
        meta = InferenceMeta(position=position, open=None if self._open_sent else self.open_meta,
                             route=route or None, push_from=push_from, compression=None if codec == "none" else codec,
                             cohort=cohort, truncate_to=position if truncate else None, step=step)
        tensors = encode(hidden, codec) + (self._adapter_tensors if not self._open_sent else [])
        await self._send(runtime_pb2.ExpertRequest(uid=self.client.model_id, tensors=tensors,
                                                   metadata=encode_meta(meta)))

    async def connect(self) -> None:
        """Open the stream now (the first send would)."""
        with remote_call(f"call to {self.hop.peer_id}"):
            await self._connect()

    async def _send(self, request: runtime_pb2.ExpertRequest) -> None:
        with remote_call(f"call to {self.hop.peer_id}"):
            await self._connect()
            await self._stream.send(request)
        self._open_sent = True  # the server opens the session before anything that comes after on this stream

    async def _connect(self) -> None:
        if self._stream is None:
            stream = await RpcStream.open(self.client.p2p, self.hop.peer_id, "rpc_inference",
                                          self.client.config.connect_timeout_s)
            if self._closed:  # closed while it opened
                await stream.close()
            self._stream = stream
            self._reader = asyncio.ensure_future(self._read())
        if self._closed:
            raise StreamClosedError(f"the session stream to {self.hop.peer_id} was closed by this client")

    async def _read(self) -> None:
        """Read the stream to its end, answers into ``_answers``, notices into ``_notices``."""
        try:
            while True:
                response = await self._stream.receive()
                meta = decode_meta(response.metadata, ResponseMeta)
                if meta.notice and meta.step is not None:
                    self._notices = {s: e for s, e in self._notices.items() if s > meta.step - 64}
                    self._notices[meta.step] = meta.push_error or ErrorInfo(code=RemoteCallError.__name__,
                                                                            message="the push failed")
                    self._noticed.set()
                elif not meta.notice:
                    self._answers.put_nowait(response)
        except BaseException as e:  # the stream ended (closed, broken, garbled), or was closed here
            cancelled = isinstance(e, asyncio.CancelledError)
            self._ended = StreamClosedError(f"the stream to {self.hop.peer_id} was closed by this client") \
                if cancelled else e
            self._answers.put_nowait(self._ended)
            self._noticed.set()
            if cancelled:
                raise

    async def _next_answer(self) -> runtime_pb2.ExpertResponse:
        item = await self._answers.get()
        if isinstance(item, BaseException):
            self._answers.put_nowait(item)  # every later read fails the same way
            raise item
        return item

    async def receive(self, step: int | None = None) -> StepAnswer:
        """The answer to step ``step`` (or the next one). A server that dies meanwhile is noticed
        through its closed stream or a failed liveness probe (see :meth:`SwarmClient.answer_of`),
        not a timeout. Answers to earlier steps that the client gave up (a pipelined prefill that
        met a failure) are skipped."""
        if self._stream is None:
            raise RemoteCallError(f"no stream is open to {self.hop.peer_id}")
        while True:
            response = await self.client.answer_of(self.hop.peer_id, self._next_answer())
            meta, out = parse_response(response, self.client.config.compression)
            if step is not None and meta.step is not None and meta.step < step:
                continue
            return StepAnswer(out, meta.pushed, meta.cohort, meta.push_error)

    async def push_failure(self, step: int) -> ErrorInfo:
        """Returns once this hop says its push of step ``step`` failed (or its stream ended):
        why. Waits for ever otherwise (the caller races it against the next hop's answer)."""
        while True:
            self._noticed.clear()
            if step in self._notices:
                return self._notices.pop(step)
            if self._ended is not None:
                return ErrorInfo(code=RemoteCallError.__name__,
                                 message=f"the stream to {self.hop.peer_id} ended: {self._ended!r}"[:4096])
            await self._noticed.wait()

    async def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            await self._stream.close()
        if self._reader is not None:
            self._reader.cancel()  # a read still waiting for an answer then fails with the stream's end


@dataclasses.dataclass(frozen=True)
class StepAnswer:
    hidden: torch.Tensor
    pushed: bool  # the server pushed its output on to the next hop
    cohort: Cohort | None  # the outputs of its batch that came to us with it
    push_error: ErrorInfo | None  # why a push it was asked for did not happen
