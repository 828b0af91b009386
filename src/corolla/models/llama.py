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

from corolla.models.adapters import BlockAdapters
from corolla.models.kv import KVCache, KVLayout

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


    # ---- batched steps over many sessions' caches (the server's inference path) ----------------
    def kv_layout(self, dtype: torch.dtype) -> KVLayout:
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return KVLayout(self.num_blocks, cfg.num_key_value_heads, head_dim, dtype)

    def lora_shape(self, target: str) -> tuple[int, int]:
        """(out, in) features of projection ``target`` (one of protocol.messages.LORA_TARGETS)."""
        module = self.layers[0].get_submodule(LORA_MODULES[target])
        return module.out_features, module.in_features

    def step(
        self, items: list[tuple[torch.Tensor, KVCache | None, int]], first: int = 0, last: int | None = None,
        adapters: list[BlockAdapters | None] | None = None,
    ) -> list[torch.Tensor]:
        """One inference step of several sessions as one batch through local blocks ``first:last``.

        ``items`` are ``(hidden [b, t, H], KVCache, position)``: any number of sessions, each
        with its own batch, length and position. Every token goes through the weights together
        (the cost of a decode step is reading the weights, so a batch costs about what one
        session does); attention runs per session against its own cache, with its own causal
        (and sliding-window) mask. This mirrors the decoder layer's forward op for op.

        A cache of None runs the item statelessly (position 0; its tokens attend only to each
        other); ``adapters`` (one per item, or None) add deep prompts and LoRA. Under autograd
        this is the training path: it differentiates to the inputs and the adapters.
        """
        from transformers.models.llama.modeling_llama import rotate_half

        last = self.num_blocks if last is None else last
        if adapters is not None and all(a is None for a in adapters):
            adapters = None
        shapes = [h.shape for h, _, _ in items]
        x = torch.cat([h.reshape(-1, h.shape[-1]) for h, _, _ in items])  # [N, H]
        positions = torch.cat([
            torch.arange(p, p + shape[1]).repeat(shape[0]) for (_, _, p), shape in zip(items, shapes)
        ])
        cos, sin = self.rotary_emb(x[None], positions[None])  # [1, N, head_dim]
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # broadcast over heads
        windows = {"full_attention": None, "sliding_attention": getattr(self.config, "sliding_window", None)}
        masks = {kind: [_step_mask(shape[1], p, windows[kind]) for (_, _, p), shape in zip(items, shapes)]
                 for kind in set(self._kinds[first:last])}
        rows = [(shape[0], shape[1], p) for (_, _, p), shape in zip(items, shapes)]

        def proj(block: int, module: nn.Module, target: str, h: torch.Tensor) -> torch.Tensor:
            out = linear(module, h)
            return out if adapters is None else _lora(out, h, block, target, rows, adapters)

        for i in range(first, last):
            layer, kind = self.layers[i], self._kinds[i]
            attn = layer.self_attn
            if adapters is not None:
                x = _add_prompts(x, i, rows, adapters)
            residual = x
            h = layer.input_layernorm(x)
            q = proj(i, attn.q_proj, "q", h).view(len(x), -1, attn.head_dim)
            k = proj(i, attn.k_proj, "k", h).view(len(x), -1, attn.head_dim)
            v = proj(i, attn.v_proj, "v", h).view(len(x), -1, attn.head_dim)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            outputs, offset = [], 0
            for (_, kv, position), (b, t, _), mask in zip(items, shapes, masks[kind]):
                n = b * t
                # contiguous: the fused CPU attention kernel refuses strided slices (and falls back to a slow one)
                qi, ki, vi = (z[offset : offset + n].view(b, t, -1, attn.head_dim).transpose(1, 2).contiguous()
                              for z in (q, k, v))
                keys, values = (ki, vi) if kv is None else kv.append(i, ki, vi, position)
                out = nn.functional.scaled_dot_product_attention(
                    qi, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=True
                )
                outputs.append(out.transpose(1, 2).reshape(n, -1))
                offset += n
            x = residual + proj(i, attn.o_proj, "o", torch.cat(outputs))
            mlp, h = layer.mlp, layer.post_attention_layernorm(x)
            x = x + proj(i, mlp.down_proj, "down",
                         mlp.act_fn(proj(i, mlp.gate_proj, "gate", h)) * proj(i, mlp.up_proj, "up", h))
        results, offset = [], 0
        for b, t, hidden_size in shapes:
            results.append(x[offset : offset + b * t].view(b, t, hidden_size))
            offset += b * t
        return results


LORA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def _segments(x: torch.Tensor, rows: list[tuple[int, int, int]]):
    offset = 0
    for b, t, _ in rows:
        yield x[offset : offset + b * t]
        offset += b * t


def _lora(out: torch.Tensor, h: torch.Tensor, block: int, target: str, rows: list[tuple[int, int, int]],
          adapters: list[BlockAdapters | None]) -> torch.Tensor:
    """``out`` (rows of all items) plus each item's LoRA delta of ``target`` in ``block``."""
    pairs = [a.lora.get((block, target)) if a is not None else None for a in adapters]
    if all(p is None for p in pairs):
        return out
    parts = []
    for seg, hs, pair, adapter in zip(_segments(out, rows), _segments(h, rows), pairs, adapters):
        if pair is not None:
            a, b = pair
            seg = seg + adapter.scale * ((hs @ a.t()) @ b.t())
        parts.append(seg)
    return torch.cat(parts)


def _add_prompts(x: torch.Tensor, block: int, rows: list[tuple[int, int, int]],
                 adapters: list[BlockAdapters | None]) -> torch.Tensor:
    """Add each item's deep prompt of ``block`` to its positions below the prompt's length."""
    prompts = [a.prompts.get(block) if a is not None else None for a in adapters]
    if all(p is None or position >= p.shape[1] for p, (_, _, position) in zip(prompts, rows)):
        return x
    parts = []
    for seg, prompt, (b, t, position) in zip(_segments(x, rows), prompts, rows):
        if prompt is not None and position < prompt.shape[1]:
            n = min(prompt.shape[1], position + t) - position  # prompt positions this step covers
            seq = seg.view(b, t, -1)
            added = prompt[:, position : position + n].expand(b, n, -1) + seq[:, :n]
            seg = torch.cat([added, seq[:, n:]], dim=1).reshape(b * t, -1)
        parts.append(seg)
    return torch.cat(parts)


SMALL_BATCH_ROWS = 8


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for ``x [rows, in]``, fast for the few rows of decode steps.

    For a handful of rows, ``x @ W.T`` goes to a single-threaded BLAS matrix-vector kernel that
    reads the weights at a fraction of the memory bandwidth; ``W @ x.T`` with at least two columns
    goes to the multi-threaded matrix-matrix kernel (about 2.7x faster for one row on this
    machine's 2 cores, measured in benchmarks/README.md). Same math, float rounding aside.
    """
    if type(layer) is not nn.Linear or x.dtype != torch.float32 or x.shape[0] > SMALL_BATCH_ROWS:
        return layer(x)  # quantized or half-precision layers, and big batches, keep their own kernels
    out = _few_rows_matmul(layer.weight, x)
    return out + layer.bias if layer.bias is not None else out


def _few_rows_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for 1..SMALL_BATCH_ROWS float32 rows, computed as ``weight @ x.T`` (see linear)."""
    rows = x.contiguous() if x.shape[0] > 1 else torch.cat([x, x.new_zeros(1, x.shape[1])])
    return (weight @ rows.t()).t()[: x.shape[0]].contiguous()  # row-major rows.t() is the slow layout


def _step_mask(tokens: int, position: int, window: int | None) -> torch.Tensor | None:
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
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.dtype == torch.float32 and 1 <= rows.shape[0] <= SMALL_BATCH_ROWS:  # decode: see linear()
            return _few_rows_matmul(weight, rows).reshape(*hidden.shape[:-1], -1)
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

    lora_modules = LORA_MODULES  # LoRA target -> the module inside a block (PEFT names it so too)

    def lora_shapes(self, config: Any) -> dict[str, tuple[int, int]]:
        """LoRA target -> (out, in) features of its projection, from the config alone."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        hidden, inter = config.hidden_size, config.intermediate_size
        q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
        return {"q": (q, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, q),
                "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}

    def build_span(self, config: Any, start: int, end: int) -> LlamaSpan:
        return LlamaSpan(config, start, end)

    def build_head(self, config: Any) -> LlamaHead:
        return LlamaHead(config)

