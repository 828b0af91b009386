"""The RPC interface between clients and servers (hivemind protobuf handlers).

Every call carries tensors serialised by ``hivemind.compression`` and msgpack metadata that
the receiver parses with a model from :mod:`corolla.protocol.messages`.

- ``rpc_info``: unary; response metadata is the server's current ServerInfo plus model id.
- ``rpc_forward``: unary; hidden states [B, T, H] through ``ForwardMeta``'s blocks, no state.
- ``rpc_inference``: bidirectional stream, one session; each message carries only new tokens'
  hidden states and an ``InferenceMeta``; the first message opens the session.
- ``rpc_push``: bidirectional stream, server to server, kept open; each message is a previous
  hop's output for one of the receiver's sessions (``PushMeta``), acknowledged in order, so the
  next server need not wait for the client to relay it.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator  # hivemind detects streams by typing.AsyncIterator

from hivemind.p2p import P2PContext, P2PDaemonError, P2PHandlerError, ServicerBase
from hivemind.proto import runtime_pb2

NAMESPACE = "corolla"


class BlockRPC(ServicerBase):
    """Handler names and stubs; the server passes its implementation as ``wrapper``."""

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

    async def rpc_forward(
        self, request: runtime_pb2.ExpertRequest, context: P2PContext
    ) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

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


# what a broken connection or a dead peer raises inside hivemind's transport
TRANSPORT_ERRORS = (P2PDaemonError, P2PHandlerError, ConnectionError, OSError, EOFError, asyncio.IncompleteReadError)


def stub_for(p2p, peer_id: str):
    from hivemind.p2p import PeerID

    return BlockRPC.get_stub(p2p, PeerID.from_base58(peer_id), namespace=NAMESPACE)
