"""What every family's span shares: one step of many sessions, batched.

A step takes several sessions' new hidden states ``(hidden [b, t, H], cache, position)``, runs
all their tokens through the weights together as rows ``[N, H]`` (a decode step costs about
reading the weights once, so a batch costs about what one session does), and attention per
session against its own cache with its own causal / sliding-window mask (:func:`attend`).

The step's sessions live in a :class:`StepContext`, made current for the step's thread by
:func:`stepping`. Two things read it while transformers' own layers run:

- the ``"corolla"`` attention function (registered with transformers' ``AttentionInterface``;
  spans built on transformers' decoder layers set ``_attn_implementation = "corolla"``), which
  splits the rows per session, appends to each cache and attends;
- :class:`SpanLinear`, the class of every linear layer of a span: a fast kernel for the few rows
  of decode steps (:func:`linear`) and each item's LoRA delta (:mod:`corolla.models.adapters`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from corolla.models.adapters import BlockAdapters
from corolla.models.kv import KVCache

Item = tuple[torch.Tensor, "KVCache | None", int]  # (hidden [b, t, H], cache or None, position)
Rows = list[tuple[int, int, int]]  # (batch, tokens, position) per item, in row order


@dataclasses.dataclass
class StepContext:
    """The sessions of one step, as the attention function and the linear layers see them."""

    caches: list[KVCache | None]
    rows: Rows
    adapters: list[BlockAdapters | None] | None = None
    _masks: dict[int | None, list[torch.Tensor | None]] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, items: list[Item], adapters: list[BlockAdapters | None] | None) -> StepContext:
        if adapters is not None and all(a is None for a in adapters):
            adapters = None
        return cls([kv for _, kv, _ in items], [(h.shape[0], h.shape[1], p) for h, _, p in items], adapters)

    def masks(self, window: int | None) -> list[torch.Tensor | None]:
        """Per item, which keys its queries see (None: all of them), for a sliding ``window``."""
        if window not in self._masks:
            self._masks[window] = [step_mask(t, p, window) for _, t, p in self.rows]
        return self._masks[window]

    def positions(self) -> torch.Tensor:
        """The position of every row: ``[N]``."""
        return torch.cat([torch.arange(p, p + t).repeat(b) for b, t, p in self.rows])


_CURRENT = threading.local()


@contextlib.contextmanager
def stepping(ctx: StepContext) -> Iterator[StepContext]:
    """Make ``ctx`` the step this thread runs (nested steps restore the outer one)."""
    outer = getattr(_CURRENT, "ctx", None)
    _CURRENT.ctx = ctx
    try:
        yield ctx
    finally:
        _CURRENT.ctx = outer


def current() -> StepContext | None:
    return getattr(_CURRENT, "ctx", None)


def flatten(items: list[Item]) -> torch.Tensor:
    """Every item's tokens as rows ``[N, H]``, in item order."""
    return torch.cat([h.reshape(-1, h.shape[-1]) for h, _, _ in items])


def unflatten(x: torch.Tensor, items: list[Item]) -> list[torch.Tensor]:
    """Rows ``[N, H]`` back to each item's ``[b, t, H]``."""
    out, offset = [], 0
    for h, _, _ in items:
        b, t = h.shape[0], h.shape[1]
        out.append(x[offset : offset + b * t].view(b, t, -1))
        offset += b * t
    return out


def segments(x: torch.Tensor, rows: Rows) -> Iterator[torch.Tensor]:
    offset = 0
    for b, t, _ in rows:
        yield x[offset : offset + b * t]
        offset += b * t


# ---- attention per session ---------------------------------------------------------------------
Bias = Callable[[int, int, int], torch.Tensor]  # (position, tokens, keys) -> additive [heads, tokens, keys]


def attend(
    ctx: StepContext, block: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    scaling: float | None = None, window: int | None = None, softcap: float | None = None,
    bias: Bias | None = None,
) -> torch.Tensor:
    """Attention of every item against its own cache in local block ``block``.

    ``q [heads, N, d]`` and ``k, v [kv_heads, N, d]`` are the rows of all items (rotary already
    applied); each item's keys and values are appended to its cache (or, without a cache, its
    tokens attend only to each other, from position 0). ``softcap`` is Gemma 2's tanh capping of
    the scores; ``bias`` an additive score bias such as ALiBi. Returns ``[N, heads, d]``.
    """
    heads, _, d = q.shape
    scale = d**-0.5 if scaling is None else scaling
    outputs, offset = [], 0
    for (b, t, position), kv, mask in zip(ctx.rows, ctx.caches, ctx.masks(window)):
        n = b * t
        # contiguous [b, heads, t, d]: the fused CPU attention kernel refuses strided slices (and falls back)
        qi, ki, vi = (z[:, offset : offset + n].reshape(z.shape[0], b, t, d).transpose(0, 1).contiguous()
                      for z in (q, k, v))
        keys, values = (ki, vi) if kv is None else kv.append(block, ki, vi, position)
        if bias is not None:
            extra = bias(position, t, keys.shape[2]).to(qi.dtype)
            mask = extra if mask is None else extra.masked_fill(~mask, float("-inf"))
        if softcap is None:
            out = nn.functional.scaled_dot_product_attention(qi, keys, values, attn_mask=mask, scale=scale,
                                                             enable_gqa=True)
        else:
            out = _capped_attention(qi, keys, values, mask, scale, softcap)
        outputs.append(out.transpose(1, 2).reshape(n, heads, d))
        offset += n
    return torch.cat(outputs)


def _capped_attention(q, k, v, mask, scale: float, softcap: float) -> torch.Tensor:
    """Attention with tanh-capped scores (eager, as transformers computes it for Gemma 2)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def step_mask(tokens: int, position: int, window: int | None) -> torch.Tensor | None:
    """Which cached keys each of ``tokens`` new queries at ``position`` sees: [tokens, position + tokens]."""
    total = position + tokens
    if tokens == 1 and (window is None or total <= window):
        return None  # one query sees everything before it
    q = torch.arange(position, total)[:, None]
    k = torch.arange(total)[None, :]
    allowed = k <= q
    if window is not None:
        allowed &= k > q - window
    return allowed


def _hf_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                  sliding_window: int | None = None, softcap: float | None = None, **_: Any):
    """transformers' attention-function signature over the current step: ``[1, heads, N, d]`` in,
    ``[1, N, heads, d]`` out (the mask transformers would pass is None: each item has its own)."""
    ctx = current()
    if ctx is None:
        raise RuntimeError("corolla attention runs only inside a span's step")
    out = attend(ctx, module.layer_idx, query[0], key[0], value[0], scaling=scaling, window=sliding_window,
                 softcap=softcap)
    return out[None], None


ATTENTION = "corolla"
_registered = False


def register_attention() -> None:
    """Register the ``"corolla"`` attention function with transformers (once)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, _hf_attention)
        _registered = True


# ---- adapters ----------------------------------------------------------------------------------
def lora(out: torch.Tensor, x: torch.Tensor, key: tuple[int, str] | None) -> torch.Tensor:
    """``out`` (rows of all items) plus each item's LoRA delta of projection ``key`` (block, target)."""
    ctx = current()
    if key is None or ctx is None or ctx.adapters is None:
        return out
    pairs = [a.lora.get(key) if a is not None else None for a in ctx.adapters]
    if all(p is None for p in pairs):
        return out
    parts = []
    for seg, xs, pair, adapter in zip(segments(out, ctx.rows), segments(x, ctx.rows), pairs, ctx.adapters):
        if pair is not None:
            a, b = pair
            seg = seg + adapter.scale * ((xs @ a.t()) @ b.t()).to(seg.dtype)
        parts.append(seg)
    return torch.cat(parts)


def add_prompts(x: torch.Tensor, ctx: StepContext, block: int) -> torch.Tensor:
    """Rows ``x [N, H]`` with each item's deep prompt of ``block`` added below the prompt's length."""
    if ctx.adapters is None:
        return x
    prompts = [a.prompts.get(block) if a is not None else None for a in ctx.adapters]
    if all(p is None or position >= p.shape[1] for p, (_, _, position) in zip(prompts, ctx.rows)):
        return x
    parts = []
    for seg, prompt, (b, t, position) in zip(segments(x, ctx.rows), prompts, ctx.rows):
        if prompt is not None and position < prompt.shape[1]:
            n = min(prompt.shape[1], position + t) - position  # prompt positions this step covers
            seq = seg.view(b, t, -1)
            added = prompt[:, position : position + n].to(seq.dtype).expand(b, n, -1) + seq[:, :n]
            seg = torch.cat([added, seq[:, n:]], dim=1).reshape(b * t, -1)
        parts.append(seg)
    return torch.cat(parts)


# ---- linear layers -----------------------------------------------------------------------------
SMALL_BATCH_ROWS = 8


class SpanLinear(nn.Linear):
    """A span's linear layer: :func:`linear`'s kernel choice plus the step's LoRA for ``lora_key``."""

    lora_key: tuple[int, str] | None = None  # (local block, LoRA target) when LoRA may adapt it
    weight16: torch.Tensor | None = None  # a float16 copy of ``weight`` for decode steps (--quant fp16-decode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        out = linear(self, rows)
        if self.lora_key is not None:
            out = lora(out, rows, self.lora_key)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])

    # A step calls a span's linear layers hundreds of times; nn.Module's call machinery (hooks)
    # costs about 3 us a call, 4% of a SmolLM2 decode step. Spans register no hooks on them.
    __call__ = forward


def adopt_linears(layers: nn.Module, lora_modules: dict[str, str]) -> None:
    """Make every ``nn.Linear`` of ``layers`` (a ModuleList of blocks) a :class:`SpanLinear`, and
    tag the projections LoRA may adapt (``target -> module path in a block``) with their key."""
    for module in layers.modules():
        if isinstance(module, nn.Linear):  # nn.Linear, or a family's subclass with the same math (FalconLinear)
            module.__class__ = SpanLinear
    for block, layer in enumerate(layers):
        for target, path in lora_modules.items():
            layer.get_submodule(path).lora_key = (block, target)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for ``x [rows, in]``, fast for the few rows of decode steps.

    For a handful of rows, ``x @ W.T`` goes to a single-threaded BLAS matrix-vector kernel that
    reads the weights at a fraction of the memory bandwidth; ``W @ x.T`` with at least two columns
    goes to the multi-threaded matrix-matrix kernel (about 2.7x faster for one row on this
    machine's 2 cores, measured in benchmarks/README.md). Same math, float rounding aside.
    """
    if not isinstance(layer, nn.Linear):
        return layer(x)
    weight16 = getattr(layer, "weight16", None)  # --quant fp16-decode: a float16 copy for decode steps
    if weight16 is not None and x.dtype == torch.float32 and x.shape[0] <= HALF_ROWS:
        out = half_rows_matmul(weight16, x)
        if out is not None:
            return out + layer.bias if layer.bias is not None else out
    if x.dtype != torch.float32 or x.shape[0] > SMALL_BATCH_ROWS:
        return nn.functional.linear(x, layer.weight, layer.bias)
    out = few_rows_matmul(layer.weight, x)
    return out + layer.bias if layer.bias is not None else out


def few_rows_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for 1..SMALL_BATCH_ROWS float32 rows, computed as ``weight @ x.T`` (see linear)."""
    rows = x.contiguous() if x.shape[0] > 1 else torch.cat([x, x.new_zeros(1, x.shape[1])])
    return (weight @ rows.t()).t()[: x.shape[0]].contiguous()  # row-major rows.t() is the slow layout


# Rows up to which a layer's float16 copy (``weight16``, --quant fp16-decode) is used. On this
# AVX2 CPU float16's kernel reads the weights once per row: a 4864x896 matmul takes 0.43 ms for one
# row (float32's fastest path: 1.05 ms), 0.83 ms for two (1.08), 1.6 ms for four (1.2), 3.7 ms for
# eight (2.1): past two rows the float32 weights are faster.
HALF_ROWS = 2


def half_rows_matmul(weight16: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``x @ weight16.T`` for up to HALF_ROWS float32 rows ``x [N, in]`` and a float16 copy of a
    weight: reads half the bytes of the float32 weight (decode is memory-bound), rounds ``x`` and
    the result to float16 on the way (a relative error of about 1e-3). The result is float32, or
    None where ``x`` or the result leaves float16's range (|v| > 65504: the caller then uses the
    float32 weights, so an outlier activation never turns into inf or NaN)."""
    out = nn.functional.linear(x.to(torch.float16), weight16).float()
    # inf or NaN anywhere makes the sum so; 1.7 us for a 4864-wide row where isfinite().all() takes 15
    return out if math.isfinite(out.sum().item()) else None
