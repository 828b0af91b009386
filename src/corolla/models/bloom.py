"""BLOOM: ALiBi instead of positions, fused query/key/value, a layer norm after the embeddings.

Built on transformers' ``BloomBlock`` weights; the step mirrors ``BloomBlock.forward`` /
``BloomAttention.forward`` for the rows of many sessions (see :mod:`corolla.models.step`). ALiBi
adds ``slope[head] * key_position`` to the scores (softmax does not see the per-query shift the
paper subtracts), so a session's bias depends only on its own key positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from corolla.errors import UnsupportedModelError
from corolla.models.adapters import BlockAdapters
from corolla.models.decoder import DecoderFamily, DecoderHead, DecoderSpan, span_config
from corolla.models.kv import KVLayout
from corolla.models.step import Item, StepContext, add_prompts, adopt_linears, attend, flatten, stepping, unflatten

LORA_MODULES = {"qkv": "self_attention.query_key_value", "o": "self_attention.dense",
                "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}


class BloomSpan(DecoderSpan):
    def __init__(self, family: BloomFamily, config: Any, start: int, end: int):
        nn.Module.__init__(self)
        from transformers.models.bloom.modeling_bloom import BloomBlock, _get_alibi_slopes

        self.config = span_config(config, start, end)
        self.start, self.end, self.num_blocks = start, end, end - start
        with torch.device("meta"):
            self.layers = nn.ModuleList(BloomBlock(self.config, i) for i in range(self.num_blocks))
        self.heads = config.n_head
        self.head_dim = config.hidden_size // config.n_head
        self.slopes = _get_alibi_slopes(self.heads, torch.device("cpu"))  # float32, kept out of .to(dtype)
        self.post_ln_residual = bool(config.apply_residual_connection_post_layernorm)
        self.lora_modules = family.lora_modules
        adopt_linears(self.layers, family.lora_modules)

    def kv_layout(self, dtype: torch.dtype) -> KVLayout:
        return KVLayout(self.num_blocks, self.heads, self.head_dim, dtype)

    def _alibi(self, position: int, tokens: int, keys: int) -> torch.Tensor:
        return (self.slopes[:, None, None] * torch.arange(keys)).expand(self.heads, tokens, keys)

    def step(self, items: list[Item], first: int = 0, last: int | None = None,
             adapters: list[BlockAdapters | None] | None = None) -> list[torch.Tensor]:
        last = self.num_blocks if last is None else last
        ctx = StepContext.of(items, adapters)
        x = flatten(items)  # [N, H]
        n = len(x)
        with stepping(ctx):
            for i in range(first, last):
                layer = self.layers[i]
                attn, mlp = layer.self_attention, layer.mlp
                x = add_prompts(x, ctx, i)
                h = layer.input_layernorm(x)
                residual = h if self.post_ln_residual else x
                qkv = attn.query_key_value(h).view(n, self.heads, 3, self.head_dim)
                q, k, v = (qkv[:, :, j].transpose(0, 1) for j in range(3))  # [heads, N, d]
                out = attend(ctx, i, q, k, v, scaling=attn.inv_norm_factor, bias=self._alibi)
                x = attn.dense(out.reshape(n, -1)) + residual
                h = layer.post_attention_layernorm(x)
                residual = h if self.post_ln_residual else x
                x = mlp.dense_4h_to_h(mlp.gelu_impl(mlp.dense_h_to_4h(h))) + residual
        return unflatten(x, items)


class BloomFamily(DecoderFamily):
    name = "bloom"
    arch = {"bloom": ("bloom", "Bloom")}
    model_types = tuple(arch)
    lora_modules = LORA_MODULES
    layers_path = "transformer.h"
    base_prefix = "transformer."
    head_tensors = {"embed_tokens.weight": "transformer.word_embeddings.weight",
                    "embed_norm.weight": "transformer.word_embeddings_layernorm.weight",
                    "embed_norm.bias": "transformer.word_embeddings_layernorm.bias",
                    "norm.weight": "transformer.ln_f.weight", "norm.bias": "transformer.ln_f.bias"}

    def check(self, config: Any) -> None:
        if config.pretraining_tp > 1 and config.slow_but_exact:
            raise UnsupportedModelError("BLOOM with slow_but_exact tensor-parallel slicing is not supported; "
                                        "set slow_but_exact to false in config.json (same math, faster)")

    def build_span(self, config: Any, start: int, end: int) -> BloomSpan:
        return BloomSpan(self, config, start, end)

    def build_head(self, config: Any) -> DecoderHead:
        with torch.device("meta"):
            embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
            norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        return DecoderHead(config, norm, embed_norm=embed_norm)
