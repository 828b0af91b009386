"""Wire types: every DHT value and RPC metadata dict is parsed by one of these models.

The names below load on first use (from :mod:`corolla.protocol.messages`), so that a light module
of this package, such as :mod:`corolla.protocol.codecs`, can be imported without pydantic.
"""

__all__ = [
    "MODELS_KEY",
    "PROTOCOL_VERSION",
    "ErrorInfo",
    "ForwardMeta",
    "InferenceMeta",
    "ModelRecord",
    "ResponseMeta",
    "ServerInfo",
    "ServerState",
    "SessionOpen",
    "block_key",
    "decode_meta",
    "encode_meta",
]


def __getattr__(name: str):
    if name in __all__:
        from corolla.protocol import messages

        return getattr(messages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
