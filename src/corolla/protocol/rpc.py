"""The RPC interface between clients and servers (hivemind protobuf handlers).

Every call carries tensors serialised by ``hivemind.compression`` and msgpack metadata that
the receiver parses with a model from :mod:`corolla.protocol.messages`.

- ``rpc_info``: unary; response metadata is the server's current ServerInfo plus model id.
- ``rpc_forward``: unary; hidden states [B, T, H] through ``ForwardMeta``'s blocks, no state.
- ``rpc_backward``: unary; the span's input, the gradient of its output and the client's trainable
  tensors (``BackwardMeta``) -> the gradient of the input and of each trainable tensor, no state.
- ``rpc_train``: bidirectional stream, one training step through a span: the first message is a
  forward with trainable tensors (``ForwardMeta``), answered with the output while the server keeps
  the autograd graph; the second brings the output's gradient and is answered like ``rpc_backward``,
  without recomputing the forward. The graph lives no longer than the stream (and ``train_hold_s``).
- ``rpc_inference``: bidirectional stream, one session; each message carries only new tokens'
  hidden states and an ``InferenceMeta``; the first message opens the session.
- ``rpc_push``: bidirectional stream, server to server, kept open; each message is a previous
  hop's output for one of the receiver's sessions (``PushMeta``), acknowledged in order, so the
  next server need not wait for the client to relay it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import AsyncIterator  # noqa: UP035  (hivemind detects streams by typing.AsyncIterator's _name)

from hivemind.p2p import P2PContext, P2PDaemonError, P2PHandlerError, ServicerBase
from hivemind.proto import runtime_pb2

from corolla.errors import PeerUnreachableError, RemoteCallError

NAMESPACE = "corolla"


class BlockRPC(ServicerBase):
    """Handler names and stubs; the server passes its implementation as ``wrapper``."""

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

    async def rpc_forward(
        self, request: runtime_pb2.ExpertRequest, context: P2PContext
    ) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

    async def rpc_backward(
        self, request: runtime_pb2.ExpertRequest, context: P2PContext
    ) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

    async def rpc_train(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def rpc_push(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        raise NotImplementedError
        yield  # pragma: no cover


# what a broken connection or a dead peer raises inside hivemind's transport (StreamClosedError is a ConnectionError)
TRANSPORT_ERRORS = (P2PDaemonError, P2PHandlerError, ConnectionError, OSError, EOFError, asyncio.IncompleteReadError)


@contextlib.contextmanager
def remote_call(what: str) -> Iterator[None]:
    """A transport failure inside becomes a RemoteCallError ``"{what} failed: {type}: {message}"``
    (chained to it); errors of other kinds pass unchanged."""
    try:
        yield
    except TRANSPORT_ERRORS as e:
        kind = PeerUnreachableError if _dial_failed(e) else RemoteCallError
        raise kind(f"{what} failed: {type(e).__name__}: {e}") from e


def _dial_failed(error: BaseException) -> bool:
    """The daemon could not connect to the peer at all (libp2p's "failed to dial", which includes its
    "dial backoff" after a recent failure): nothing was sent to it."""
    return isinstance(error, P2PDaemonError) and "failed to dial" in str(error)


def stub_for(p2p, peer_id: str):
    from hivemind.p2p import PeerID

    return BlockRPC.get_stub(p2p, PeerID.from_base58(peer_id), namespace=NAMESPACE)


class StreamClosedError(ConnectionError):
    """The other side of a stream closed it or died."""


class RpcStream:
    """One bidirectional protobuf stream to a peer's handler, whose reads fail as soon as the connection does.

    hivemind's stub iterator, when the connection closes, stops reading but then waits for the
    *request* iterator to finish before it ends; a session's requests end only when the client
    closes it, so a server that died while the client waited for its answer went unnoticed until
    the client's own timeout. Here the reader and the writer are independent: a closed or reset
    connection ends :meth:`receive` at once with :class:`StreamClosedError`. The framing is
    hivemind's (``P2P.send_protobuf`` / ``receive_protobuf``), so the server side is unchanged.
    """

    def __init__(self, peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.peer_id, self._reader, self._writer = peer_id, reader, writer
        self._sending = asyncio.Lock()  # one message at a time on the wire (send may be called concurrently)

    @classmethod
    async def open(cls, p2p, peer_id: str, method: str, timeout_s: float) -> RpcStream:
        """Open ``method`` (e.g. ``"rpc_inference"``) on ``peer_id``; a dial that takes over ``timeout_s`` fails."""
        from hivemind.p2p import PeerID

        name = BlockRPC._get_handle_name(NAMESPACE, method)
        try:
            _, reader, writer = await asyncio.wait_for(
                p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), name), timeout_s)
        except TimeoutError:
            raise StreamClosedError(f"could not open a stream to {peer_id} within {timeout_s:g} s") from None
        return cls(peer_id, reader, writer)

    async def send(self, message) -> None:
        from hivemind.p2p import P2P

        async with self._sending:
            if self._writer.is_closing():
                raise StreamClosedError(f"the stream to {self.peer_id} is closed")
            await P2P.send_protobuf(message, self._writer)

    async def receive(self, response_type=runtime_pb2.ExpertResponse):
        """The next message; :class:`StreamClosedError` when the peer closed the stream or died."""
        from hivemind.p2p import P2P

        try:
            message, error = await P2P.receive_protobuf(response_type, self._reader)
        except asyncio.IncompleteReadError:
            raise StreamClosedError(f"{self.peer_id} closed the stream (or its connection was lost)") from None
        if error is not None:
            raise P2PHandlerError(f"{self.peer_id} failed: {error.message}")
        return message

    async def close(self) -> None:
        """Say end-of-stream (the handler ends its session cleanly) and close; never raises."""
        from hivemind.p2p import P2P

        try:
            if not self._writer.is_closing():
                async with asyncio.timeout(1.0):
                    async with self._sending:
                        await P2P.send_protobuf(P2P.END_OF_STREAM, self._writer)
        except Exception:  # the peer may already be gone
            pass
        finally:
            self._writer.close()
