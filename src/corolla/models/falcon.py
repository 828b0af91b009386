"""Falcon: parallel attention and MLP, multi-query or grouped KV (the new decoder architecture), rotary.

Built on transformers' ``FalconDecoderLayer`` weights; the step mirrors its forward for the rows
of many sessions (see :mod:`corolla.models.step`). Caches keep the KV heads the checkpoint has
(one for multi-query, ``num_kv_heads`` groups for the new architecture), not copies per query head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from corolla.errors import UnsupportedModelError
from corolla.models.adapters import BlockAdapters
from corolla.models.decoder import DecoderFamily, DecoderHead, DecoderSpan
from corolla.models.kv import KVLayout
from corolla.models.step import Item, StepContext, add_prompts, attend, flatten, stepping, unflatten

LORA_MODULES = {"qkv": "self_attention.query_key_value", "o": "self_attention.dense",
                "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class FalconSpan(DecoderSpan):
    def __init__(self, family: FalconFamily, config: Any, start: int, end: int):
        super().__init__(family, config, start, end)
        cfg = self.config  # the layers set num_ln_in_parallel_attn on it
        self.new_arch, self.parallel = bool(cfg.new_decoder_architecture), bool(cfg.parallel_attn)
        self.two_norms = self.new_arch and cfg.num_ln_in_parallel_attn == 2
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // self.heads
        self.kv_heads = cfg.num_kv_heads if self.new_arch else (1 if cfg.multi_query else self.heads)

    def kv_layout(self, dtype: torch.dtype) -> KVLayout:
        return KVLayout(self.num_blocks, self.kv_heads, self.head_dim, dtype)

    def _split(self, qkv: torch.Tensor):
        """Fused projections ``[N, ...]`` -> q ``[heads, N, d]``, k and v ``[kv_heads, N, d]``."""
        n, d = len(qkv), self.head_dim
        if self.new_arch:  # per KV group: its query heads, then its key, then its value
            grouped = qkv.view(n, self.kv_heads, self.heads // self.kv_heads + 2, d)
            q, k, v = grouped[:, :, :-2].reshape(n, self.heads, d), grouped[:, :, -2], grouped[:, :, -1]
        elif self.kv_heads == 1:  # multi-query: every query head, then one key and one value
            fused = qkv.view(n, self.heads + 2, d)
            q, k, v = fused[:, :-2], fused[:, -2:-1], fused[:, -1:]
        else:
            fused = qkv.view(n, self.heads, 3, d)
            q, k, v = fused[:, :, 0], fused[:, :, 1], fused[:, :, 2]
        return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)

    def step(self, items: list[Item], first: int = 0, last: int | None = None,
             adapters: list[BlockAdapters | None] | None = None) -> list[torch.Tensor]:
        last = self.num_blocks if last is None else last
        ctx = StepContext.of(items, adapters)
        x = flatten(items)  # [N, H]
        n = len(x)
        cos, sin = self._position_embeddings(x[None], ctx, None)  # [1, N, d]
        cos, sin = cos[0], sin[0]
        with stepping(ctx):
            for i in range(first, last):
                layer = self.layers[i]
                attn, mlp = layer.self_attention, layer.mlp
                x = add_prompts(x, ctx, i)
                residual = x
                if self.two_norms:
                    h, h_mlp = layer.ln_attn(x), layer.ln_mlp(x)
                else:
                    h = h_mlp = layer.input_layernorm(x)
                q, k, v = self._split(attn.query_key_value(h))
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
                out = attn.dense(attend(ctx, i, q, k, v, scaling=attn.inv_norm_factor).reshape(n, -1))
                if not self.new_arch and not self.parallel:  # sequential: attention, norm, MLP
                    residual = residual + out
                    h_mlp = layer.post_attention_layernorm(residual)
                y = mlp.dense_4h_to_h(mlp.act(mlp.dense_h_to_4h(h_mlp)))
                if self.new_arch or self.parallel:
                    y = y + out
                x = y + residual
        return unflatten(x, items)


class FalconFamily(DecoderFamily):
    name = "falcon"
    arch = {"falcon": ("falcon", "Falcon")}
    model_types = tuple(arch)
    lora_modules = LORA_MODULES
    attn_implementation = "sdpa"  # the layers are only weights here: FalconSpan.step attends itself
    layers_path = "transformer.h"
    base_prefix = "transformer."
    head_tensors = {"embed_tokens.weight": "transformer.word_embeddings.weight",
                    "norm.weight": "transformer.ln_f.weight", "norm.bias": "transformer.ln_f.bias"}

    def check(self, config: Any) -> None:
        if getattr(config, "alibi", False):
            raise UnsupportedModelError("Falcon with ALiBi (falcon-rw) is not supported; rotary Falcon models are")

    def build_span(self, config: Any, start: int, end: int) -> FalconSpan:
        return FalconSpan(self, config, start, end)

    def build_head(self, config: Any) -> DecoderHead:
        with torch.device("meta"):
            norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        return DecoderHead(config, norm)
