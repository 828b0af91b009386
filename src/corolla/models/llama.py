"""The Llama family: Llama, Mistral, Qwen2 (attention biases), SmolLM2 (a Llama).

Built on transformers' own decoder layers; this module mirrors ``LlamaModel.forward`` /
``Qwen2Model.forward`` for a contiguous span of blocks.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn

from corolla.models.registry import register

# model_type -> (transformers module name, class prefix)
_ARCH = {"llama": ("llama", "Llama"), "mistral": ("mistral", "Mistral"), "qwen2": ("qwen2", "Qwen2")}


def _hf_class(model_type: str, suffix: str) -> type:
    module_name, prefix = _ARCH[model_type]
    module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    return getattr(module, prefix + suffix)


def span_config(config: Any, start: int, end: int) -> Any:
    """A copy of ``config`` describing only blocks ``start:end`` (renumbered from 0)."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = end - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[start:end])
    if getattr(cfg, "_attn_implementation", None) is None:
        cfg._attn_implementation = "sdpa"
    return cfg


def _layer_kinds(cfg: Any) -> list[str]:
    if getattr(cfg, "layer_types", None):
        return list(cfg.layer_types)
    sliding = cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * cfg.num_hidden_layers


class LlamaSpan(nn.Module):
    """Blocks ``start:end``: ``forward(hidden [B, T, H], cache, position) -> [B, T, H]``."""

    def __init__(self, config: Any, start: int, end: int):
        super().__init__()
        self.config = span_config(config, start, end)
        self.start, self.end = start, end
        self.num_blocks = end - start
        layer_cls = _hf_class(config.model_type, "DecoderLayer")
        with torch.device("meta"):  # weights arrive through load_weights (assign, no copy)
            self.layers = nn.ModuleList(layer_cls(self.config, i) for i in range(self.num_blocks))
        self.rotary_emb = _hf_class(config.model_type, "RotaryEmbedding")(config=self.config)
        self._kinds = _layer_kinds(self.config)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.layers.load_state_dict(state, strict=True, assign=True)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def forward(
        self, hidden: torch.Tensor, cache: Any = None, position: int = 0, first: int = 0, last: int | None = None
    ) -> torch.Tensor:
        """Run local blocks ``first:last`` (default: all) on ``hidden`` at sequence ``position``."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        last = self.num_blocks if last is None else last
        _, seq_len, _ = hidden.shape
        position_ids = torch.arange(position, position + seq_len, device=hidden.device).unsqueeze(0)
        kinds = self._kinds[first:last]
        masks = {}
        for kind, make_mask in (
            ("full_attention", create_causal_mask),
            ("sliding_attention", create_sliding_window_causal_mask),
        ):
            if kind in kinds:  # size the mask against a cache layer this call really uses
                masks[kind] = make_mask(
                    config=self.config, inputs_embeds=hidden, attention_mask=None, cache=cache,
                    position_ids=position_ids, layer_idx=first + kinds.index(kind),
                )
        position_embeddings = self.rotary_emb(hidden, position_ids)  # (cos, sin), each [1, T, head_dim]
        for kind, layer in zip(kinds, self.layers[first:last]):
            hidden = layer(
                hidden,
                attention_mask=masks[kind],
                position_ids=position_ids,
                cache=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
            )
        return hidden


class LlamaHead(nn.Module):
    """Client-side parts: token embeddings, final norm, LM head (tied to embeddings or not)."""

    def __init__(self, config: Any):
        super().__init__()
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        norm_cls = _hf_class(config.model_type, "RMSNorm")
        with torch.device("meta"):
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
            self.lm_head = None if self.tied else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True, assign=True)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)  # [B, T] -> [B, T, H]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        weight = self.embed_tokens.weight if self.tied else self.lm_head.weight
        return nn.functional.linear(hidden, weight)  # [B, T, H] -> [B, T, V]


class LlamaFamily:
    name = "llama"
    model_types = tuple(_ARCH)

    def block_prefix(self, block: int) -> str:
        return f"model.layers.{block}."

    def head_tensor_names(self, config: Any) -> dict[str, str]:
        """Local parameter name -> checkpoint tensor name, for the client's head."""
        names = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
        if not getattr(config, "tie_word_embeddings", False):
            names["lm_head.weight"] = "lm_head.weight"
        return names

    def build_span(self, config: Any, start: int, end: int) -> LlamaSpan:
        return LlamaSpan(config, start, end)

    def build_head(self, config: Any) -> LlamaHead:
        return LlamaHead(config)


register(LlamaFamily())
