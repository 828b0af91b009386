"""Adapters a span applies on top of its frozen weights: deep prompts and LoRA.

A client fine-tuning through the swarm owns its trainable tensors and sends them with each
request (:class:`corolla.protocol.messages.AdapterSpec` says what follows the hidden states); a
server may also host adapters of its own (loaded from PEFT folders). Either way the span gets a
:class:`BlockAdapters` for its local blocks, which :meth:`Span.step` applies:

- a deep prompt ``[1 or batch, P, H]`` of a block is added to the hidden states of positions
  ``0..P-1`` before the block (the client put P soft-prompt positions first);
- LoRA on a projection adds ``scale * (x @ A.T) @ B.T`` to its output.
"""

from __future__ import annotations

import dataclasses

import torch

from corolla.errors import BadRequestError
from corolla.protocol.messages import LORA_TARGETS, AdapterSpec


@dataclasses.dataclass
class BlockAdapters:
    """Adapters of a span's local blocks (keys are local block indices)."""

    prompts: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)  # block -> [1|B, P, H]
    lora: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)
    scale: float = 1.0  # LoRA: alpha / rank

    @property
    def prompt_len(self) -> int:
        return next(iter(self.prompts.values())).shape[1] if self.prompts else 0

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, in the wire order of :class:`AdapterSpec` (blocks ascending)."""
        blocks = sorted({b for b in self.prompts} | {b for b, _ in self.lora})
        out: list[torch.Tensor] = []
        for b in blocks:
            if b in self.prompts:
                out.append(self.prompts[b])
            for t in LORA_TARGETS:
                if (b, t) in self.lora:
                    out.extend(self.lora[(b, t)])
        return out

    def to(self, dtype: torch.dtype) -> BlockAdapters:
        return BlockAdapters({b: p.to(dtype) for b, p in self.prompts.items()},
                             {k: (a.to(dtype), b.to(dtype)) for k, (a, b) in self.lora.items()}, self.scale)

    def shifted(self, offset: int) -> BlockAdapters:
        """The same adapters with block indices moved by ``offset`` (global <-> local)."""
        return BlockAdapters({b + offset: p for b, p in self.prompts.items()},
                             {(b + offset, t): ab for (b, t), ab in self.lora.items()}, self.scale)


def expected_shapes(spec: AdapterSpec, lora_shape, hidden_size: int, first: int, last: int,
                    batch: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...] | None]]:
    """(name, shape, alternative shape) of each tensor ``spec`` sends for local blocks ``first:last``.

    ``lora_shape(target) -> (out, in)`` is the projection's shape (the family knows it).
    """
    shapes = []
    for b in range(first, last):
        if spec.prompt_len:
            shapes.append((f"prompt of block {b}", (batch, spec.prompt_len, hidden_size),
                           (1, spec.prompt_len, hidden_size)))
        for t in spec.lora_targets:
            out_f, in_f = lora_shape(t)
            shapes.append((f"LoRA A of {t} in block {b}", (spec.lora_rank, in_f), None))
            shapes.append((f"LoRA B of {t} in block {b}", (out_f, spec.lora_rank), None))
    return shapes


def unpack(spec: AdapterSpec, tensors: list[torch.Tensor], *, lora_shape, hidden_size: int,
           first: int, last: int, batch: int, max_rank: int) -> BlockAdapters:
    """Check a request's adapter tensors for local blocks ``first:last`` against ``spec`` and
    the span; a BlockAdapters keyed by local block. Every problem is a BadRequestError."""
    if spec.lora_rank > max_rank:
        raise BadRequestError(f"LoRA rank {spec.lora_rank} is more than this server's limit of {max_rank}")
    shapes = expected_shapes(spec, lora_shape, hidden_size, first, last, batch)
    if len(tensors) != len(shapes):
        raise BadRequestError(f"the adapter spec sends {len(shapes)} tensors for blocks {first}:{last}, "
                              f"got {len(tensors)}")
    for tensor, (name, shape, alt) in zip(tensors, shapes):
        if tensor.dtype != torch.float32:
            raise BadRequestError(f"{name} must be float32, got {tensor.dtype}")
        if tuple(tensor.shape) != shape and tuple(tensor.shape) != alt:
            raise BadRequestError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
        if not torch.isfinite(tensor).all():
            raise BadRequestError(f"{name} contains NaN or infinity")
    result = BlockAdapters(scale=spec.lora_scale)
    it = iter(tensors)
    for b in range(first, last):
        if spec.prompt_len:
            result.prompts[b] = next(it)
        for t in spec.lora_targets:
            result.lora[(b, t)] = (next(it), next(it))
    return result
