"""Tensors on the wire: hivemind.compression, with every decode failure a BadRequestError."""

from __future__ import annotations

import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

from corolla.errors import BadRequestError

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
