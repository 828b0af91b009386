"""Wire types: every DHT value and RPC metadata dict is parsed by one of these models."""

from corolla.protocol.messages import (
    PROTOCOL_VERSION,
    ErrorInfo,
    ForwardMeta,
    InferenceMeta,
    ResponseMeta,
    ServerInfo,
    ServerState,
    SessionOpen,
    block_key,
    decode_meta,
    encode_meta,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorInfo",
    "ForwardMeta",
    "InferenceMeta",
    "ResponseMeta",
    "ServerInfo",
    "ServerState",
    "SessionOpen",
    "block_key",
    "decode_meta",
    "encode_meta",
]
