"""KV caches that grow with their sessions, and the server's byte budget for all of them.

A session's cache holds keys and values per block as ``[batch, kv_heads, capacity, head_dim]``
buffers. Capacity grows in steps as the session does (never reserved for ``max_length`` up front),
and every byte allocated is counted against the server's budget, so the budget is spent on what
sessions really hold. The layout comes from the model code (:class:`corolla.models.kv.KVLayout`),
and :class:`SessionKV` is what a span's batched step writes into (a :class:`corolla.models.kv.KVCache`).
"""

from __future__ import annotations

import threading

import torch

from corolla.models.kv import KVLayout

GROW_ALIGN = 64  # capacities are multiples of this many tokens
GROW_MAX_STEP = 1024  # beyond doubling small caches, grow by at most this many tokens at once


class SessionKV:
    """The keys and values of one session for blocks ``first:last`` of a span (a ``KVCache``)."""

    def __init__(self, layout: KVLayout, first: int, last: int, batch: int, max_length: int):
        self.layout, self.first, self.last = layout, first, last
        self.batch, self.max_length = batch, max_length
        self.capacity = 0
        self.keys: list[torch.Tensor | None] = [None] * layout.blocks
        self.values: list[torch.Tensor | None] = [None] * layout.blocks

    @property
    def token_bytes(self) -> int:
        """Bytes per token of capacity for this session (its blocks and batch)."""
        per_block = self.layout.token_bytes // self.layout.blocks
        return per_block * (self.last - self.first) * self.batch

    @property
    def nbytes(self) -> int:
        return self.capacity * self.token_bytes

    def capacity_for(self, length: int) -> int:
        """The capacity to grow to so that ``length`` tokens fit (the current one if they do)."""
        if length <= self.capacity:
            return self.capacity
        step = min(max(self.capacity, GROW_ALIGN), GROW_MAX_STEP)
        wanted = max(length, self.capacity + step)
        wanted = -(-wanted // GROW_ALIGN) * GROW_ALIGN
        return max(length, min(wanted, self.max_length))

    def grow(self, capacity: int, length: int) -> None:
        """Reallocate to ``capacity`` tokens, keeping the first ``length`` (compute thread only)."""
        if capacity <= self.capacity:
            return
        shape = (self.batch, self.layout.kv_heads, capacity, self.layout.head_dim)
        for i in range(self.first, self.last):
            for store in (self.keys, self.values):
                new = torch.empty(shape, dtype=self.layout.dtype)
                if store[i] is not None and length:
                    new[:, :, :length] = store[i][:, :, :length]
                store[i] = new
        self.capacity = capacity

    def append(self, block: int, key: torch.Tensor, value: torch.Tensor, position: int):
        """Write ``[batch, kv_heads, t, head_dim]`` at ``position``; return everything up to it."""
        end = position + key.shape[2]
        k, v = self.keys[block], self.values[block]
        k[:, :, position:end] = key
        v[:, :, position:end] = value
        return k[:, :, :end], v[:, :, :end]

    def free(self) -> int:
        """Drop the buffers; return the bytes released."""
        released = self.nbytes
        self.keys = [None] * self.layout.blocks
        self.values = [None] * self.layout.blocks
        self.capacity = 0
        return released


class CacheBudget:
    """Bytes of KV cache a server may hold, and how many are allocated now (thread-safe)."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.used = 0
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return self.total - self.used

    def try_take(self, nbytes: int) -> bool:
        with self._lock:
            if self.used + nbytes > self.total:
                return False
            self.used += nbytes
            return True

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self.used = max(0, self.used - nbytes)
