"""Phi-3 (and Phi-3.5 / Phi-4-mini): fused query/key/value and gate/up projections, partial rotary."""

from __future__ import annotations

from corolla.models.decoder import DecoderFamily


class Phi3Family(DecoderFamily):
    name = "phi3"
    arch = {"phi3": ("phi3", "Phi3")}
    model_types = tuple(arch)
    # PEFT names them so too; LoRA on the fused projections adapts q, k and v (gate and up) at once
    lora_modules = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
                    "down": "mlp.down_proj"}
