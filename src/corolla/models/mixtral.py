"""Mixtral: Mistral's attention and a sparse mixture of experts in every block.

Each block's router picks ``num_experts_per_tok`` of ``num_local_experts`` experts per token;
transformers' expert loop runs each chosen expert once on all the rows that chose it. A span's
step hands it the rows of every session in the step at once, so tokens of many sessions that
chose the same expert go through its weights together (one weight read for all of them).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from corolla.errors import ModelError
from corolla.models.decoder import ATTENTION_LORA, DecoderFamily


class MixtralFamily(DecoderFamily):
    name = "mixtral"
    arch = {"mixtral": ("mixtral", "Mixtral")}
    model_types = tuple(arch)
    lora_modules = ATTENTION_LORA  # the experts are 3-D tensors, not linear layers

    def fix_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints keep one ``w1, w2, w3`` per expert under ``block_sparse_moe`` (as published);
        transformers' blocks hold them stacked: ``gate_up_proj [E, 2I, H]`` (w1 then w3 of each
        expert) and ``down_proj [E, H, I]``. Keys are ``"{local block}.{name in the block}"``."""
        out, experts = {}, {}
        for key, tensor in state.items():
            block, _, name = key.partition(".")
            name = name.replace("block_sparse_moe.", "mlp.", 1)
            match = re.fullmatch(r"mlp\.experts\.(\d+)\.(w[123])\.weight", name)
            if match:
                experts.setdefault(block, {})[(int(match[1]), match[2])] = tensor
            else:
                out[f"{block}.{name}"] = tensor
        for block, parts in experts.items():
            n = 1 + max(e for e, _ in parts)
            out[f"{block}.mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([parts[(e, "w1")], parts[(e, "w3")]]) for e in range(n)])
            out[f"{block}.mlp.experts.down_proj"] = torch.stack([parts[(e, "w2")] for e in range(n)])
        return out

    def check_precision(self, config: Any, dtype: torch.dtype, quant: str) -> None:
        if quant in ("int8", "fp16-decode"):
            raise ModelError(f"--quant {quant} works on linear layers, and Mixtral's experts (most of its weights) "
                             "are not: serve Mixtral with --quant none (float32, bfloat16 or float16)")
