"""Loading only what a peer needs from a Hugging Face folder of safetensors files.

Servers read the tensors of their blocks by name (memory-mapped), never the whole checkpoint;
clients read only the head (embeddings, final norm, LM head).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from corolla.errors import ModelError
from corolla.models.precision import DTYPES
from corolla.models.registry import family_for


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_config(folder: Path) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    family_for(config)  # fail early on unsupported architectures
    return config


def tensor_index(folder: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> safetensors file that holds it."""
    folder = Path(folder)
    index_file = folder / "model.safetensors.index.json"
    if index_file.exists():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise ModelError(f"{folder} has no model.safetensors (or index); convert the model first")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}


def family_index(folder: Path, family: Any) -> dict[str, tuple[Path, str]]:
    """Tensor name as the family knows it -> (file, name stored in the file). Checkpoints saved from
    the base model (``BloomModel`` rather than ``BloomForCausalLM``, as bloom-560m is) lack its prefix."""
    index = tensor_index(folder)
    prefix = family.base_prefix
    if any(name.startswith(prefix) for name in index):
        return {name: (file, name) for name, file in index.items()}
    return {(name if name.startswith("lm_head.") else prefix + name): (file, name) for name, file in index.items()}


def read_tensors(index: dict[str, tuple[Path, str]], names: dict[str, str], dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """Read checkpoint tensors ``names`` (local name -> name in ``index``), cast to ``dtype``."""
    from safetensors import safe_open

    missing = [ckpt for ckpt in names.values() if ckpt not in index]
    if missing:
        raise ModelError(f"checkpoint is missing tensors: {', '.join(missing[:5])}")
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for local, ckpt in names.items():
        file, stored = index[ckpt]
        by_file.setdefault(file, []).append((local, stored))
    out = {}
    for file, pairs in by_file.items():
        with safe_open(file, framework="pt") as f:
            for local, stored in pairs:
                out[local] = f.get_tensor(stored).to(dtype)
    return out


def load_span(folder: Path, config: Any, start: int, end: int, dtype: torch.dtype) -> torch.nn.Module:
    """Build blocks ``start:end`` and load only their weights."""
    if not 0 <= start < end <= config.num_hidden_layers:
        raise ModelError(f"blocks {start}:{end} are outside 0:{config.num_hidden_layers}")
    family = family_for(config)
    index = family_index(folder, family)
    names = {}
    for block in range(start, end):
        prefix = family.block_prefix(block)
        for ckpt in index:
            if ckpt.startswith(prefix):
                names[f"{block - start}.{ckpt[len(prefix):]}"] = ckpt
    span = family.build_span(config, start, end)
    span.load_weights(family.fix_checkpoint(read_tensors(index, names, dtype)))
    return span.to(dtype).eval().requires_grad_(False)


def load_head(folder: Path, config: Any, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    family = family_for(config)
    head = family.build_head(config)
    head.load_weights(read_tensors(family_index(folder, family), family.head_tensor_names(config), dtype))
    return head.eval().requires_grad_(False)


def block_sizes(folder: Path, config: Any, dtype: torch.dtype, quant: str = "none") -> list[int]:
    """Bytes each block's weights take once loaded in ``dtype`` (int8: linear weights one byte;
    fp16-decode: two more for their float16 copy), read from the checkpoint's headers (nothing
    loaded). Blocks differ where a model mixes dense and mixture-of-experts blocks."""
    from safetensors import safe_open

    family = family_for(config)
    index = family_index(folder, family)
    element = torch.tensor([], dtype=dtype).element_size()
    prefixes = [family.block_prefix(b) for b in range(config.num_hidden_layers)]
    sizes = [0] * len(prefixes)
    by_file: dict[Path, list[tuple[int, str]]] = {}
    for name, (file, stored) in index.items():
        for b, prefix in enumerate(prefixes):
            if name.startswith(prefix):
                by_file.setdefault(file, []).append((b, stored))
                break
    for file, entries in by_file.items():
        with safe_open(file, framework="pt") as f:
            for b, stored in entries:
                shape = f.get_slice(stored).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                quantized = quant in ("int8", "fp16-decode") and len(shape) == 2 and stored.endswith(".weight")
                sizes[b] += count * ({"int8": 1, "fp16-decode": element + 2}[quant] if quantized else element)
    return sizes


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a loaded module's weights, int8 packed weights and float16 decode copies included
    (measured, not estimated)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    total = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    for m in module.modules():
        if isinstance(m, DynamicLinear):
            weight, bias = m._weight_bias()
            total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None
                                                                else 0)
        copy = getattr(m, "weight16", None)  # --quant fp16-decode
        if isinstance(copy, torch.Tensor):
            total += copy.numel() * copy.element_size()
    return total
