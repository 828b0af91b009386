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
}


def save_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    import transformers

    spec = dict(TINY[family])
    config = getattr(transformers, spec.pop("cls"))(**spec)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    # random init leaves tiny logits; scale so greedy decoding is not a tie-fest
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.save_pretrained(folder)
    return folder
