"""Tensors on the wire: hivemind.compression, with every decode failure a BadRequestError.

Hidden states travel in one of four codecs (their names: :mod:`corolla.protocol.codecs`), chosen per
request by the client (servers answer and push in the same one):

- ``none``: float32;
- ``fp16``: hivemind's FLOAT16 (half the bytes);
- ``bf16``: bfloat16 bits sent as int16 (half the bytes; hivemind would widen bf16 to 4 bytes);
- ``int8``: int8 values with one float32 scale per row of the last dimension (absmax / 127), a
  quarter of the bytes. (hivemind 1.1.12's own 8-bit codecs fail with numpy 2.)
"""

from __future__ import annotations

import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

from corolla.errors import BadRequestError
from corolla.protocol.codecs import CODECS

MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024


def to_wire(tensor: torch.Tensor, compression: int = runtime_pb2.CompressionType.NONE) -> runtime_pb2.Tensor:
    return serialize_torch_tensor(tensor.detach().cpu(), compression)


def from_wire(proto: runtime_pb2.Tensor) -> torch.Tensor:
    numel = 1
    for dim in proto.size:  # uint32 on the wire: never negative
        numel *= dim
    if numel > MAX_TENSOR_ELEMENTS:
        raise BadRequestError(f"tensor of shape {list(proto.size)} is too large")
    try:
        tensor = deserialize_torch_tensor(proto)
    except Exception as e:  # garbage buffers fail in numpy/torch with many exception types
        raise BadRequestError(f"could not decode tensor: {type(e).__name__}: {e}") from None
    return tensor



def encode(tensor: torch.Tensor, codec: str | None = None) -> list[runtime_pb2.Tensor]:
    """Hidden states -> the wire tensors of ``codec`` (default ``none``)."""
    tensor = tensor.detach().float()
    if codec in (None, "none"):
        return [to_wire(tensor)]
    if codec == "fp16":
        return [to_wire(tensor, runtime_pb2.CompressionType.FLOAT16)]
    if codec == "bf16":
        return [to_wire(tensor.to(torch.bfloat16).view(torch.int16))]
    if codec == "int8":
        scale = (tensor.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_min(1e-30)
        values = torch.round(tensor / scale).clamp_(-127, 127).to(torch.int8)
        return [to_wire(values), to_wire(scale)]
    raise BadRequestError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def decode(protos, codec: str | None = None) -> torch.Tensor:
    """The wire tensors of ``codec`` -> hidden states; anything malformed is a BadRequestError."""
    codec = codec or "none"
    expected = 2 if codec == "int8" else 1
    if len(protos) != expected:
        raise BadRequestError(f"codec {codec} sends {expected} tensor(s), got {len(protos)}")
    if codec in ("none", "fp16"):
        return from_wire(protos[0])  # as sent: the receiver checks its dtype
    if codec == "bf16":
        bits = from_wire(protos[0])
        if bits.dtype != torch.int16:
            raise BadRequestError(f"codec bf16 sends int16 bits, got {bits.dtype}")
        return bits.view(torch.bfloat16).float()
    if codec == "int8":
        values, scale = from_wire(protos[0]), from_wire(protos[1])
        if values.dtype != torch.int8 or scale.dtype != torch.float32:
            raise BadRequestError(f"codec int8 sends int8 values and float32 scales, got {values.dtype}, {scale.dtype}")
        if values.dim() == 0 or scale.shape != (*values.shape[:-1], 1):
            raise BadRequestError(f"int8 scales {list(scale.shape)} do not match values {list(values.shape)}")
        return values.float() * scale
    raise BadRequestError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
