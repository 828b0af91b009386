"""LoRA adapters in the Hugging Face PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors``.

corolla reads and writes the files itself (PEFT needs the whole model in memory, which a server or a
client of a swarm does not have). Tensor names are PEFT's for a causal LM,
``base_model.model.<block prefix><module>.lora_A.weight`` ([rank, in]) and ``.lora_B.weight``
([out, rank]); the scale is ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA). Adapters PEFT can
make and corolla cannot apply (DoRA, biases, per-module ranks, other module types) are refused
with a clear error, never applied half.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from corolla.cache import atomic_write
from corolla.errors import ModelError
from corolla.models.registry import family_for
from corolla.protocol.messages import LORA_TARGETS

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclasses.dataclass
class LoraWeights:
    rank: int
    alpha: float
    targets: tuple[str, ...]  # in LORA_TARGETS order
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (global block, target) -> (A, B)
    scale: float
    base_model: str | None = None


def save_lora(folder: Path, config: Any, weights: LoraWeights) -> None:
    """Write ``weights`` as a PEFT LoRA adapter of the model ``config`` describes."""
    from safetensors.torch import save

    family = family_for(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (block, target), (a, b) in sorted(weights.pairs.items()):
        name = f"base_model.model.{family.block_prefix(block)}{family.lora_modules[target]}"
        tensors[f"{name}.lora_A.weight"] = a.detach().float().contiguous().cpu()
        tensors[f"{name}.lora_B.weight"] = b.detach().float().contiguous().cpu()
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": weights.base_model,
        "r": weights.rank, "lora_alpha": weights.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(family.lora_modules[t].rsplit(".", 1)[-1] for t in weights.targets),
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "inference_mode": True,
        "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
    }
    atomic_write(folder / WEIGHTS_FILE, save(tensors))
    atomic_write(folder / CONFIG_FILE, json.dumps(peft_config, indent=2).encode())


def load_lora(folder: Path, config: Any, blocks: range | None = None) -> LoraWeights:
    """Read a PEFT LoRA folder for the model ``config`` describes (only ``blocks``, if given)."""
    from safetensors import safe_open

    folder = Path(folder)
    try:
        peft_config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder} is not a PEFT adapter folder: {CONFIG_FILE}: {e}") from None
    family = family_for(config)
    _check(folder, peft_config)
    rank, alpha = int(peft_config["r"]), float(peft_config.get("lora_alpha") or peft_config["r"])
    scale = alpha / math.sqrt(rank) if peft_config.get("use_rslora") else alpha / rank
    by_module = {module.rsplit(".", 1)[-1]: target for target, module in family.lora_modules.items()}
    pairs: dict[tuple[int, str], list] = {}
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise ModelError(f"{folder} has no {WEIGHTS_FILE} (adapters saved as .bin are not read: no pickle)")
    with safe_open(path, framework="pt") as f:
        for name in f.keys():
            block, target, which = _parse_name(name, family, by_module, folder)
            if blocks is not None and block not in blocks:
                continue
            pair = pairs.setdefault((block, target), [None, None])
            pair[0 if which == "lora_A" else 1] = f.get_tensor(name).float()
    targets = {t for _, t in pairs}
    for (block, target), (a, b) in pairs.items():
        if a is None or b is None:
            raise ModelError(f"{folder}: block {block} {target} has only one of lora_A and lora_B")
        out_f, in_f = family.lora_shapes(config)[target]
        if a.shape != (rank, in_f) or b.shape != (out_f, rank):
            raise ModelError(f"{folder}: block {block} {target}: lora_A {list(a.shape)} / lora_B {list(b.shape)} "
                             f"do not fit this model (expected [{rank}, {in_f}] and [{out_f}, {rank}])")
    return LoraWeights(rank, alpha, tuple(t for t in LORA_TARGETS if t in targets),
                       {k: (a, b) for k, (a, b) in pairs.items()}, scale, peft_config.get("base_model_name_or_path"))


def _check(folder: Path, cfg: dict) -> None:
    def refuse(what: str) -> None:
        raise ModelError(f"{folder}: {what} — corolla applies plain LoRA adapters only")

    if cfg.get("peft_type") != "LORA":
        refuse(f"peft_type is {cfg.get('peft_type')!r}, not 'LORA'")
    if cfg.get("use_dora"):
        refuse("a DoRA adapter")
    if cfg.get("bias", "none") != "none":
        refuse(f"bias {cfg.get('bias')!r}")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        refuse("per-module ranks or alphas (rank_pattern / alpha_pattern)")
    if cfg.get("modules_to_save"):
        refuse(f"modules_to_save {cfg.get('modules_to_save')}")
    if cfg.get("fan_in_fan_out"):
        refuse("fan_in_fan_out weights")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1:
        refuse(f"rank r={cfg.get('r')!r}")


def _parse_name(name: str, family, by_module: dict[str, str], folder: Path) -> tuple[int, str, str]:
    """``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`` -> (3, "q", "lora_A")."""
    parts = name.split(".")
    try:
        which, module = parts[-2], parts[-3]
        block = int(next(p for i, p in enumerate(parts) if p.isdigit() and i > 0))
    except (IndexError, StopIteration, ValueError):
        raise ModelError(f"{folder}: tensor {name!r} is not a LoRA weight of a block") from None
    if which not in ("lora_A", "lora_B") or parts[-1] != "weight" or module not in by_module:
        raise ModelError(f"{folder}: tensor {name!r} is not a LoRA weight of a supported projection "
                         f"({', '.join(sorted(by_module))})")
    if f"{family.block_prefix(block)}{family.lora_modules[by_module[module]]}" not in name:
        raise ModelError(f"{folder}: tensor {name!r} does not name a block's projection of this model")
    return block, by_module[module], which
