"""Token counting and fitting text into a token budget.

The counter is injected (the model's tokenizer when known); :func:`approx_tokens` is the cheap
default. Fitting never trusts that token counts add up: every candidate text is counted whole, and
the search over window sizes is a binary search, so a real tokenizer costs ``O(log lines)`` calls.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

Counter = Callable[[str], int]
MAX_LINE_CHARS = 400  # longer lines (minified code, data) are cut in truncated views
CHARS_PER_TOKEN_MAX = 8  # no tokenizer packs more characters than this into a token on average


def approx_tokens(text: str) -> int:
    """A cheap over-estimate for code and English: one token per 3.5 characters, rounded up."""
    return math.ceil(len(text) / 3.5)


def clip_line(line: str, limit: int = MAX_LINE_CHARS) -> str:
    return line if len(line) <= limit else line[:limit] + " …"


def omitted(first: int, last: int) -> str:
    """The marker line that stands for lines ``first``..``last`` (1-based) left out."""
    return f"… (lines {first}-{last} omitted) …" if first != last else f"… (line {first} omitted) …"


def window_bounds(n: int, size: int, center: int | None) -> tuple[int, int]:
    """0-based half-open ``[a, b)`` of ``size`` lines: the head, or centred on ``center`` (0-based)."""
    if center is None:
        return 0, size
    a = max(0, min(center - size // 2, n - size))
    return a, a + size


def largest_fit(n: int, fits: Callable[[int], bool]) -> int:
    """The largest ``k`` in ``1..n`` with ``fits(k)`` (0 if none), assuming ``fits`` is monotone."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_window(lines: list[str], render: Callable[[int, int], str], budget: int, count: Counter,
               center: int | None = None) -> tuple[str, int, int] | None:
    """The largest window of ``lines`` whose rendering (``render(a, b)``, 0-based half-open) fits.

    Returns ``(text, a, b)``, or ``None`` when not even one line fits. ``center`` keeps the window
    around that line (the cursor or the selection); without it the head of the text is kept.
    """
    n = len(lines)
    cache: dict[int, str] = {}
    # a real tokenizer is slow on a huge text: first bound the window by characters (no counting)
    prefix = list(itertools.accumulate((len(line) + 1 for line in lines), initial=0))

    def chars(k: int) -> int:
        a, b = window_bounds(n, k, center)
        return prefix[b] - prefix[a]

    n_max = max(largest_fit(n, lambda k: chars(k) <= budget * CHARS_PER_TOKEN_MAX), min(n, 1))

    def text(k: int) -> str:
        if k not in cache:
            cache[k] = render(*window_bounds(n, k, center))
        return cache[k]

    k = largest_fit(n_max, lambda k: count(text(k)) <= budget)
    if k == 0:
        return None
    a, b = window_bounds(n, k, center)
    return text(k), a, b


def with_markers(lines: list[str], a: int, b: int, first_line: int = 1) -> str:
    """``lines[a:b]`` with a marker line for what was cut before and after (numbers 1-based)."""
    n = len(lines)
    out = []
    if a > 0:
        out.append(omitted(first_line, first_line + a - 1))
    out.extend(lines if (a, b) == (0, n) else (clip_line(line) for line in lines[a:b]))
    if b < n:
        out.append(omitted(first_line + b, first_line + n - 1))
    return "\n".join(out)
