"""Model families: the only code that touches transformers internals lives in family modules.

A family turns a Hugging Face config into two pieces:
- a *span* (blocks ``start:end``) that servers load and run: ``span(hidden, cache, position)``;
- a *head* (embeddings, final norm, LM head) that clients load.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from corolla.errors import UnsupportedModelError


class Span(Protocol):
    num_blocks: int

    def new_cache(self) -> Any: ...

    def load_weights(self, state: dict[str, torch.Tensor]) -> None: ...

    def __call__(self, hidden: torch.Tensor, cache: Any = None, position: int = 0) -> torch.Tensor: ...


class Head(Protocol):
    def load_weights(self, state: dict[str, torch.Tensor]) -> None: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


class Family(Protocol):
    name: str
    model_types: tuple[str, ...]

    def block_prefix(self, block: int) -> str: ...

    def head_tensor_names(self, config: Any) -> dict[str, str]: ...

    def build_span(self, config: Any, start: int, end: int) -> nn.Module: ...

    def build_head(self, config: Any) -> nn.Module: ...


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def family_for(config: Any) -> Family:
    _load_builtin()
    model_type = getattr(config, "model_type", None)
    try:
        return _FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported yet (supported: {known})"
        ) from None


def supported_model_types() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def _load_builtin() -> None:
    from corolla.models import llama  # noqa: F401  (registers itself)
