"""Gemma 2 and Gemma 3 (text): sliding-window and global layers, norms around attention and MLP.

Gemma scales token embeddings by sqrt(hidden); Gemma 2 caps attention scores and final logits
with tanh (``attn_logit_softcapping``, ``final_logit_softcapping``); Gemma 3 normalises queries and
keys and gives local and global layers rotary embeddings of their own.
"""

from __future__ import annotations

from typing import Any

import torch

from corolla.errors import UnsupportedModelError
from corolla.models.decoder import ATTENTION_LORA, MLP_LORA, DecoderFamily, DecoderHead


class _Gemma(DecoderFamily):
    lora_modules = {**ATTENTION_LORA, **MLP_LORA}

    def check(self, config: Any) -> None:
        if getattr(config, "use_bidirectional_attention", False):
            raise UnsupportedModelError("Gemma with bidirectional attention (an embedding model) is not a causal LM")

    def build_head(self, config: Any) -> DecoderHead:
        norm_cls = self.hf_class(config, "RMSNorm")
        with torch.device("meta"):
            norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        return DecoderHead(config, norm, embed_scale=config.hidden_size**0.5,
                           softcap=getattr(config, "final_logit_softcapping", None))


class Gemma2Family(_Gemma):
    name = "gemma2"
    arch = {"gemma2": ("gemma2", "Gemma2")}
    model_types = tuple(arch)


class Gemma3Family(_Gemma):
    name = "gemma3"
    arch = {"gemma3_text": ("gemma3", "Gemma3")}
    model_types = tuple(arch)
    per_kind_rotary = True  # rotary_emb(x, positions, layer_type): local and global layers differ
