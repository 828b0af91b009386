"""Server-to-server push: long-lived ``rpc_push`` streams from a server to the next hops.

A unary call through the p2p daemons opens a new stream each time, which costs about as much
as the client relaying the step itself; a stream per next server, kept open, is what makes
pushing faster than relaying. Each push is acknowledged, in order, on the same stream; the
pusher need not wait for the acknowledgement before it answers its client (see ``rpc_inference``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any

from hivemind.proto import runtime_pb2

from corolla.protocol.messages import ResponseMeta, decode_meta
from corolla.protocol.rpc import RpcStream, StreamClosedError

log = logging.getLogger(__name__)


class PushLink:
    """One open push stream to one peer; it breaks (and fails every waiting push) as soon as
    the connection does, so a dead next server costs the client no timeout."""

    def __init__(self, p2p, peer_id: str):
        self.p2p, self.peer_id = p2p, peer_id
        self._stream: RpcStream | None = None
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._reader: asyncio.Task | None = None
        self._sending = asyncio.Lock()  # sends and their futures queued in the same order
        self.broken = False

    async def _read(self) -> None:
        try:
            while True:
                response = await self._stream.receive()
                future = self._waiting.popleft()
                if not future.done():  # its sender may have stopped waiting
                    future.set_result(response)
        except Exception as e:
            log.debug("push stream to %s broke: %s: %s", self.peer_id, type(e).__name__, e)
        finally:
            self.broken = True
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(StreamClosedError(f"push stream to {self.peer_id} closed"))

    async def send(self, request: runtime_pb2.ExpertRequest, timeout_s: float) -> asyncio.Future:
        """Send ``request``; the future resolves to its acknowledgement (or fails with the stream)."""
        future = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout_s):
            async with self._sending:
                if self.broken:
                    raise StreamClosedError(f"push stream to {self.peer_id} closed")
                if self._stream is None:
                    self._stream = await RpcStream.open(self.p2p, self.peer_id, "rpc_push", timeout_s)
                    self._reader = asyncio.create_task(self._read())
                self._waiting.append(future)
                await self._stream.send(request)
        return future

    def close(self) -> None:
        self.broken = True
        if self._reader is not None:
            self._reader.cancel()
        if self._stream is not None:
            asyncio.ensure_future(self._stream.close())


class PushLinks:
    """The open push streams of one server, by peer; a broken one is replaced on the next push."""

    def __init__(self, p2p):
        self.p2p = p2p
        self._links: dict[str, PushLink] = {}

    async def push(self, peer_id: str, request: runtime_pb2.ExpertRequest,
                   timeout_s: float) -> Coroutine[Any, Any, ResponseMeta]:
        """Send ``request`` to ``peer_id``; returns once it is sent, with a coroutine (to be
        awaited) for its acknowledgement, which comes within what is left of ``timeout_s`` or
        fails. A link that fails either is dropped: the next push opens a fresh stream."""
        link = self._links.get(peer_id)
        if link is None or link.broken:
            link = self._links[peer_id] = PushLink(self.p2p, peer_id)
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            future = await link.send(request, timeout_s)
        except BaseException:
            self._drop(peer_id, link)
            raise
        return self._acknowledged(peer_id, link, future, deadline)

    async def _acknowledged(self, peer_id: str, link: PushLink, future: asyncio.Future,
                            deadline: float) -> ResponseMeta:
        try:
            async with asyncio.timeout_at(deadline):
                response = await future
        except BaseException:
            self._drop(peer_id, link)  # slow or broken
            raise
        return decode_meta(response.metadata, ResponseMeta)

    def _drop(self, peer_id: str, link: PushLink) -> None:
        link.close()
        if self._links.get(peer_id) is link:
            del self._links[peer_id]

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
