"""Token counting for context budgets: the model's own tokenizer when corolla has its files, else an estimate.

The assistant only talks to an OpenAI-compatible endpoint, so it cannot ask the model to count. For the
models corolla serves it finds the tokenizer in its own cache (packaged names, converted folders); any
other name falls back to :func:`approx_tokens` (about 3.5 characters a token for code, rounded up),
and says so through :attr:`TokenCounter.exact`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from corolla.assistant.context.budget import approx_tokens

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TokenCounter:
    count: Callable[[str], int]
    exact: bool  # True when it is the model's own tokenizer
    source: str  # where the tokenizer came from, or "estimate"

    def __call__(self, text: str) -> int:
        return self.count(text)


def _tokenizer_file(model: str) -> Path | None:
    from corolla.cache import model_dir
    from corolla.models.packaged import PACKAGED

    candidates = []
    path = Path(model).expanduser()
    if path.is_dir():
        candidates.append(path / "tokenizer.json")
    if model in PACKAGED:
        candidates.append(model_dir(model) / "hf" / "tokenizer.json")
    return next((c for c in candidates if c.is_file()), None)


@functools.lru_cache(maxsize=8)
def token_counter(model: str | None) -> TokenCounter:
    """The counter for ``model`` (a packaged name like ``qwen2.5-coder-0.5b`` or a model folder)."""
    file = _tokenizer_file(model) if model else None
    if file is None:
        return TokenCounter(approx_tokens, exact=False, source="estimate")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    return TokenCounter(lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids),
                        exact=True, source=str(file))
