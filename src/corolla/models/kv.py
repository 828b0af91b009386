"""What a span needs to know about KV caches: their layout, and how it writes into one.

A span computes; where keys and values are kept, and how much memory they may take, is its
caller's business (the server's growing per-session caches and byte budget live in
:mod:`corolla.server.kv`). The model code only describes the layout of what it caches and writes
through :class:`KVCache`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch


@dataclasses.dataclass(frozen=True)
class KVLayout:
    """What one token of one sequence costs: ``blocks`` x (key + value) x kv_heads x head_dim."""

    blocks: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def token_bytes(self) -> int:
        return 2 * self.blocks * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


class KVCache(Protocol):
    """One session's keys and values, as :meth:`Span.step <corolla.models.registry.Span.step>` uses them."""

    def append(
        self, block: int, key: torch.Tensor, value: torch.Tensor, position: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``[batch, kv_heads, t, head_dim]`` of local block ``block`` at ``position``;
        return the keys and values of every position up to the end of what was written."""
        ...


class GrowingKV:
    """A KVCache that simply grows (one session, any batch): for running a span on its own, as
    the parity tests and tools do. Servers use their budgeted ``corolla.server.kv.SessionKV``."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def append(self, block: int, key: torch.Tensor, value: torch.Tensor, position: int):
        if block in self.keys:
            key = torch.cat([self.keys[block][:, :, :position], key], dim=2)
            value = torch.cat([self.values[block][:, :, :position], value], dim=2)
        self.keys[block], self.values[block] = key, value
        return key, value
