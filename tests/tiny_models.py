"""Tiny random models of every supported family, saved the way users' folders look."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = {
    "llama": dict(
        cls="LlamaConfig", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512,
        tie_word_embeddings=False,
    ),
    "qwen2": dict(
        cls="Qwen2Config", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "mistral": dict(
        cls="MistralConfig", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512,
        sliding_window=None, tie_word_embeddings=False,
    ),
    "bloom": dict(
        cls="BloomConfig", hidden_size=64, n_layer=4, n_head=4, vocab_size=320, tie_word_embeddings=True,
    ),
    # the new decoder architecture: grouped KV, two layer norms, parallel attention and MLP
    "falcon": dict(
        cls="FalconConfig", hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_kv_heads=2,
        new_decoder_architecture=True, vocab_size=320, max_position_embeddings=512, bias=False,
        tie_word_embeddings=True,
    ),
    # Falcon-7B's layout: multi-query attention (one KV head), one norm, parallel attention and MLP
    "falcon-mq": dict(
        cls="FalconConfig", hidden_size=64, num_hidden_layers=4, num_attention_heads=4, multi_query=True,
        new_decoder_architecture=False, parallel_attn=True, vocab_size=320, max_position_embeddings=512,
        bias=False, tie_word_embeddings=True,
    ),
    "mixtral": dict(
        cls="MixtralConfig", hidden_size=64, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        vocab_size=320, max_position_embeddings=512, sliding_window=None, tie_word_embeddings=False,
    ),
    # sliding windows of 8 so that prompts and 32 generated tokens cross them
    "gemma2": dict(
        cls="Gemma2Config", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=320, max_position_embeddings=512,
        sliding_window=8, query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    ),
    "gemma3_text": dict(
        cls="Gemma3TextConfig", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=320, max_position_embeddings=512,
        sliding_window=8, query_pre_attn_scalar=16,
    ),
    "phi3": dict(
        cls="Phi3Config", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512,
        original_max_position_embeddings=512, partial_rotary_factor=0.5, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, sliding_window=None, tie_word_embeddings=False,
    ),
}


def save_tiny_model(family: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """``overrides``: config fields that differ from ``TINY[family]`` (e.g. ``num_hidden_layers``)."""
    import transformers

    spec = dict(TINY[family], **overrides)
    config = getattr(transformers, spec.pop("cls"))(**spec)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    # random init leaves tiny logits; scale so greedy decoding is not a tie-fest
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.save_pretrained(folder)
    return folder
