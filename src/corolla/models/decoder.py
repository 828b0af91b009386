"""Spans and heads built on transformers' own decoder layers.

Families whose decoder layers call transformers' attention interface (Llama, Mistral, Qwen2,
Mixtral, Gemma 2 and 3, Phi-3) share this code: :class:`DecoderSpan` builds blocks ``start:end``
from the family's ``DecoderLayer`` class and runs them on the rows of a whole step (see
:mod:`corolla.models.step`); mixture-of-experts blocks route every row of the step at once, so
tokens of all sessions that chose an expert go through it together. :class:`DecoderHead` is the
client's embeddings, final norm and LM head. A family module says which transformers classes to
use and how checkpoint tensors are named (:class:`DecoderFamily`).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn

from corolla.errors import BadRequestError
from corolla.models.adapters import BlockAdapters
from corolla.models.kv import GrowingKV, KVCache, KVLayout
from corolla.models.step import (
    ATTENTION,
    HALF_ROWS,
    SMALL_BATCH_ROWS,
    Item,
    StepContext,
    add_prompts,
    adopt_linears,
    attend,
    few_rows_matmul,
    flatten,
    half_rows_matmul,
    register_attention,
    stepping,
    unflatten,
)


def span_config(config: Any, start: int, end: int) -> Any:
    """A copy of ``config`` describing only blocks ``start:end`` (renumbered from 0)."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = end - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[start:end])
    return cfg


def layer_kinds(cfg: Any) -> list[str]:
    if getattr(cfg, "layer_types", None):
        return list(cfg.layer_types)
    return ["full_attention"] * cfg.num_hidden_layers


class DecoderSpan(nn.Module):
    """Blocks ``start:end`` of a family built on transformers' decoder layers (a ``Span``)."""

    def __init__(self, family: DecoderFamily, config: Any, start: int, end: int):
        super().__init__()
        register_attention()
        self.config = span_config(config, start, end)
        self.config._attn_implementation = family.attn_implementation
        if getattr(self.config, "_experts_implementation", "") is None:
            # transformers' loop over the experts the step's rows chose, each on all of its rows at once
            self.config._experts_implementation = "eager"
        self.start, self.end, self.num_blocks = start, end, end - start
        layer_cls = family.hf_class(config, family.layer_suffix)
        with torch.device("meta"):  # weights arrive through load_weights (assign, no copy)
            self.layers = nn.ModuleList(layer_cls(self.config, i) for i in range(self.num_blocks))
        self.kinds = layer_kinds(self.config)
        self.per_kind_rotary = family.per_kind_rotary
        self.rotary_emb = family.hf_class(config, "RotaryEmbedding")(config=self.config) if family.rotary else None
        rope = getattr(self.rotary_emb, "rope_type", "default")
        rope_types = set(rope.values()) if isinstance(rope, dict) else {rope}
        # these ropes change with the longest position they see: compute them per item, as a solo run would
        self.rotary_per_item = bool(rope_types & {"dynamic", "longrope"})
        self.lora_modules = family.lora_modules
        adopt_linears(self.layers, family.lora_modules)
        self.llama_shaped = family.llama_shaped
        self.window = family.window(self.config)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.layers.load_state_dict(state, strict=True, assign=True)  # swaps parameters, keeps __init__'s SpanLinears

    def kv_layout(self, dtype: torch.dtype) -> KVLayout:
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return KVLayout(self.num_blocks, cfg.num_key_value_heads, head_dim, dtype)

    def lora_shape(self, target: str) -> tuple[int, int]:
        """(out, in) features of the projection LoRA ``target`` names in every block."""
        if target not in self.lora_modules:
            raise BadRequestError(f"LoRA target {target!r} does not exist in {self.config.model_type} blocks "
                                  f"(they have {', '.join(self.lora_modules)})")
        module = self.layers[0].get_submodule(self.lora_modules[target])
        return module.out_features, module.in_features

    def new_cache(self) -> GrowingKV:
        return GrowingKV()

    def forward(self, hidden: torch.Tensor, cache: KVCache | None = None, position: int = 0,
                first: int = 0, last: int | None = None) -> torch.Tensor:
        """Local blocks ``first:last`` on ``hidden [B, T, H]`` at ``position`` (stateless without a cache)."""
        return self.step([(hidden, cache, position)], first, last)[0]

    def _position_embeddings(self, x: torch.Tensor, ctx: StepContext, kind: str | None):
        args = (kind,) if self.per_kind_rotary else ()
        if not self.rotary_per_item:
            return self.rotary_emb(x, ctx.positions()[None], *args)  # (cos, sin), each [1, N, head_dim]
        parts = [self.rotary_emb(x, torch.arange(p, p + t).repeat(b)[None], *args) for b, t, p in ctx.rows]
        return torch.cat([c for c, _ in parts], dim=1), torch.cat([s for _, s in parts], dim=1)

    def step(self, items: list[Item], first: int = 0, last: int | None = None,
             adapters: list[BlockAdapters | None] | None = None) -> list[torch.Tensor]:
        """One step of several sessions as one batch through local blocks ``first:last``.

        ``items`` are ``(hidden [b, t, H], KVCache or None, position)``; each attends to its own
        cache (None: its tokens only, from position 0). ``adapters`` (one per item, or None) add
        deep prompts and LoRA. Under autograd this is the training path.
        """
        last = self.num_blocks if last is None else last
        ctx = StepContext.of(items, adapters)
        x = flatten(items)
        kinds = self.kinds[first:last]
        position_embeddings = {kind: self._position_embeddings(x[None], ctx, kind if self.per_kind_rotary else None)
                               for kind in (set(kinds) if self.per_kind_rotary else {None})}
        positions = None if self.llama_shaped else ctx.positions()[None]
        with stepping(ctx):
            for i, kind in zip(range(first, last), kinds):
                x = add_prompts(x, ctx, i)
                cos_sin = position_embeddings[kind if self.per_kind_rotary else None]
                if self.llama_shaped:
                    x = self._llama_block(i, x, ctx, cos_sin)
                else:
                    x = self.layers[i](x[None], attention_mask=None, position_ids=positions, cache=None,
                                       use_cache=False, position_embeddings=cos_sin)[0]
        return unflatten(x, items)

    def _llama_block(self, i: int, x: torch.Tensor, ctx: StepContext, cos_sin) -> torch.Tensor:
        """``LlamaDecoderLayer.forward`` (and Mistral's, Qwen2's) op for op on rows ``x [N, H]``.

        The same math as calling the layer, without its Python around every op: transformers'
        layer, attention and MLP wrappers cost about 90 us a block, 11% of a SmolLM2 decode step
        on this machine's CPU. The parity tests hold the two equal."""
        layer = self.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        n, d = len(x), attn.head_dim
        cos, sin = (c[0, :, None, :] for c in cos_sin)  # [N, 1, d]: broadcast over heads
        h = layer.input_layernorm(x)
        q, k, v = (proj(h).view(n, -1, d) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        window = getattr(attn, "sliding_window", None) or self.window
        out = attend(ctx, i, q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scaling=attn.scaling,
                     window=window)
        x = x + attn.o_proj(out.reshape(n, -1))
        h = layer.post_attention_layernorm(x)
        return x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderHead(nn.Module):
    """Client-side parts: token embeddings (optionally scaled or normed), final norm, LM head."""

    def __init__(self, config: Any, norm: nn.Module, *, embed_norm: nn.Module | None = None,
                 embed_scale: float | None = None, softcap: float | None = None):
        super().__init__()
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.embed_scale, self.softcap = embed_scale, softcap
        with torch.device("meta"):
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.embed_norm = embed_norm
            self.norm = norm
            self.lm_head = None if self.tied else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True, assign=True)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [B, T] -> [B, T, H]
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        return self.embed_norm(x) if self.embed_norm is not None else x

    weight16: torch.Tensor | None = None  # a float16 copy of the LM head for decode steps (add_fp16_copy)

    def add_fp16_copy(self) -> None:
        """Keep a float16 copy of the LM head's weights for decode steps of :meth:`logits` (one or two
        rows: half the bytes read; see step.half_rows_matmul). It costs half their memory more."""
        weight = self.embed_tokens.weight if self.tied else self.lm_head.weight
        self.weight16 = weight.detach().to(torch.float16)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        rows = hidden.reshape(-1, hidden.shape[-1])
        half = (half_rows_matmul(self.weight16, rows) if self.weight16 is not None and rows.dtype == torch.float32
                and rows.shape[0] <= HALF_ROWS else None)
        if half is not None:
            logits = half.reshape(*hidden.shape[:-1], -1)
            return torch.tanh(logits / self.softcap) * self.softcap if self.softcap is not None else logits
        weight = self.embed_tokens.weight if self.tied else self.lm_head.weight
        if rows.dtype == torch.float32 and 1 <= rows.shape[0] <= SMALL_BATCH_ROWS:  # decode: see step.linear
            logits = few_rows_matmul(weight, rows).reshape(*hidden.shape[:-1], -1)
        else:
            logits = nn.functional.linear(hidden, weight)  # [B, T, H] -> [B, T, V]
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class DecoderFamily:
    """A family on transformers' decoder layers; subclasses set the class attributes below."""

    name: str
    model_types: tuple[str, ...]
    # model_type -> (transformers module, class name prefix)
    arch: dict[str, tuple[str, str]]
    lora_modules: dict[str, str]  # LoRA target (protocol.messages.LORA_TARGETS) -> module path in a block
    layer_suffix = "DecoderLayer"
    llama_shaped = False  # blocks exactly LlamaDecoderLayer's: DecoderSpan runs them without the wrappers
    attn_implementation = ATTENTION  # spans whose step does its own attention leave transformers' choice
    rotary = True
    per_kind_rotary = False  # Gemma 3: rotary_emb(x, positions, layer_type)
    layers_path = "model.layers"
    base_prefix = "model."  # checkpoints saved from the base model (not ...ForCausalLM) leave it out

    def hf_class(self, config: Any, suffix: str) -> type:
        module_name, prefix = self.arch[config.model_type]
        module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
        return getattr(module, prefix + suffix)

    def block_prefix(self, block: int) -> str:
        return f"{self.layers_path}.{block}."

    def check(self, config: Any) -> None:
        """Raise UnsupportedModelError for configurations of this family corolla cannot serve."""

    def check_precision(self, config: Any, dtype: torch.dtype, quant: str) -> None:
        """Raise ModelError where this family cannot be served in ``dtype`` with ``quant``."""

    def window(self, config: Any) -> int | None:
        """The sliding window every layer's attention uses, where the config sets one for all."""
        return None

    def fix_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A span's tensors as read from the checkpoint (``"{local block}.{name}"``) -> as its blocks hold them."""
        return state

    def lora_shapes(self, config: Any) -> dict[str, tuple[int, int]]:
        """LoRA target -> (out, in) features of its projection (from one block built on the meta device)."""
        with torch.device("meta"):
            span = self.build_span(config, 0, 1)
        return {target: span.lora_shape(target) for target in self.lora_modules}

    # the client head's tensors but its LM head: local parameter name -> checkpoint tensor name
    head_tensors = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}

    def head_tensor_names(self, config: Any) -> dict[str, str]:
        """Local parameter name -> checkpoint tensor name, for the client's head: ``head_tensors``,
        plus the LM head unless the config ties it to the token embeddings."""
        names = dict(self.head_tensors)
        if not getattr(config, "tie_word_embeddings", False):
            names["lm_head.weight"] = "lm_head.weight"
        return names

    def build_span(self, config: Any, start: int, end: int) -> DecoderSpan:
        return DecoderSpan(self, config, start, end)

    def build_head(self, config: Any) -> DecoderHead:
        norm_cls = self.hf_class(config, "RMSNorm")
        with torch.device("meta"):
            norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        return DecoderHead(config, norm)


# the projections of a Llama-style block
ATTENTION_LORA = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                  "o": "self_attn.o_proj"}
MLP_LORA = {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
