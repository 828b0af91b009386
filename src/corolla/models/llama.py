"""The Llama family: Llama, Mistral (sliding window), Qwen2 (attention biases), SmolLM2 (a Llama).

Built on transformers' own decoder layers (:mod:`corolla.models.decoder`).
"""

from __future__ import annotations

from typing import Any

from corolla.models.decoder import ATTENTION_LORA, MLP_LORA, DecoderFamily

LORA_MODULES = {**ATTENTION_LORA, **MLP_LORA}


class LlamaFamily(DecoderFamily):
    name = "llama"
    arch = {"llama": ("llama", "Llama"), "mistral": ("mistral", "Mistral"), "qwen2": ("qwen2", "Qwen2")}
    model_types = tuple(arch)
    lora_modules = LORA_MODULES  # PEFT names the modules so too
    llama_shaped = True

    def window(self, config: Any) -> int | None:
        # Mistral's attention windows every layer (Qwen2's layers carry their own sliding_window)
        return getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
