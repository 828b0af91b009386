"""Model families: the only code that touches transformers internals lives in family modules.

A family turns a Hugging Face config into two pieces:
- a *span* (blocks ``start:end``, an ``nn.Module``) that servers load and run (:class:`Span`);
- a *head* (embeddings, final norm, LM head) that clients load (:class:`Head`).

The registry knows the built-in families and imports them on first use; a family module does not
import the registry (no import cycle), and other families may be added with :func:`register`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from corolla.errors import UnsupportedModelError
from corolla.models.adapters import BlockAdapters
from corolla.models.kv import KVCache, KVLayout


class Span(Protocol):
    """What corolla calls on a span: the loader (``load_weights``) and the server (the rest; see
    ``corolla.server.handlers``, ``.batching`` and ``.throughput``). A family's span may offer more
    (the parity tests run Llama spans on transformers' own cache through ``new_cache``)."""

    num_blocks: int

    def load_weights(self, state: dict[str, torch.Tensor]) -> None: ...

    def kv_layout(self, dtype: torch.dtype) -> KVLayout:
        """What one token of one sequence costs in the KV cache of all the span's blocks."""
        ...

    def step(
        self, items: list[tuple[torch.Tensor, KVCache | None, int]], first: int = 0, last: int | None = None,
        adapters: list[BlockAdapters | None] | None = None,
    ) -> list[torch.Tensor]:
        """One inference step of several sessions, ``(hidden [b, t, H], cache, position)`` each,
        batched through local blocks ``first:last``; their outputs in order. A cache of None is a
        stateless pass from position 0; ``adapters`` (one per item) add deep prompts and LoRA
        (:mod:`corolla.models.adapters`). Differentiable: under autograd it is the training path."""
        ...

    def lora_shape(self, target: str) -> tuple[int, int]:
        """(out, in) features of the projection LoRA target ``target`` names in every block."""
        ...

    def __call__(self, hidden: torch.Tensor, *, first: int = 0, last: int | None = None) -> torch.Tensor:
        """Stateless forward of ``hidden [B, T, H]`` (positions from 0) through local blocks ``first:last``."""
        ...


class Head(Protocol):
    def load_weights(self, state: dict[str, torch.Tensor]) -> None: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


class Family(Protocol):
    name: str
    model_types: tuple[str, ...]

    lora_modules: dict[str, str]  # LoRA target (protocol.messages.LORA_TARGETS) -> module path in a block

    def block_prefix(self, block: int) -> str: ...

    def check(self, config: Any) -> None: ...  # UnsupportedModelError for configurations it cannot serve

    def check_precision(self, config: Any, dtype: torch.dtype, quant: str) -> None: ...  # ModelError if refused

    def fix_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...  # names/layouts

    def lora_shapes(self, config: Any) -> dict[str, tuple[int, int]]: ...  # target -> (out, in)

    def head_tensor_names(self, config: Any) -> dict[str, str]: ...

    def build_span(self, config: Any, start: int, end: int) -> nn.Module: ...  # and a Span

    def build_head(self, config: Any) -> nn.Module: ...  # and a Head


_FAMILIES: dict[str, Family] = {}
_builtin_loaded = False


def register(family: Family) -> Family:
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def family_for(config: Any) -> Family:
    _load_builtin()
    model_type = getattr(config, "model_type", None)
    try:
        family = _FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported yet (supported: {known})"
        ) from None
    family.check(config)
    return family


def supported_model_types() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def _load_builtin() -> None:
    """Register the families that ship with corolla (once, on first use)."""
    global _builtin_loaded
    if _builtin_loaded:
        return
    from corolla.models.bloom import BloomFamily
    from corolla.models.falcon import FalconFamily
    from corolla.models.gemma import Gemma2Family, Gemma3Family
    from corolla.models.llama import LlamaFamily
    from corolla.models.mixtral import MixtralFamily
    from corolla.models.phi3 import Phi3Family

    families = (LlamaFamily(), BloomFamily(), FalconFamily(), MixtralFamily(), Gemma2Family(), Gemma3Family(),
                Phi3Family())
    for family in families:
        register(family)
    _builtin_loaded = True
