"""Token counting for context budgets: the model's own tokenizer when its file is at hand, else an estimate.

The assistant only talks to an OpenAI-compatible endpoint, so it cannot ask the model to count, and it
does not know where anyone keeps model files: its caller says where the model's ``tokenizer.json`` is
(the CLI looks in corolla's model cache; see ``Assistant(find_tokenizer=...)``). Without one it falls
back to :func:`approx_tokens` (about 3.5 characters a token for code, rounded up), and says so through
:attr:`TokenCounter.exact`.
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


ESTIMATE = TokenCounter(approx_tokens, exact=False, source="estimate")


@functools.lru_cache(maxsize=8)
def token_counter(tokenizer_file: Path | None) -> TokenCounter:
    """The counter of the tokenizer in ``tokenizer_file`` (a ``tokenizer.json``), or :data:`ESTIMATE`
    when there is none, or when the ``tokenizers`` library is not installed (``corolla[assistant]``
    alone does not bring it)."""
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        return ESTIMATE
    try:
        from tokenizers import Tokenizer
    except ImportError:
        logger.debug("the tokenizers library is not installed: token counts are estimated")
        return ESTIMATE

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return TokenCounter(lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids),
                        exact=True, source=str(tokenizer_file))
