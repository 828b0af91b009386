"""Markdown code fences, both ways: a file shown to the model in a fenced block (:func:`code_block`, with
the language of :func:`corolla.assistant.languages.fence_language`), and the fenced blocks of a model's
reply with the file path written for each.

Models name the file of a block on the line before it (or before a SEARCH/REPLACE block), or in the
fence's info string, with all kinds of decoration: ``calc.py``, ``**calc.py**``, ```calc.py```,
``# File: calc.py``, ``### src/a.py``, ``- src/a.py``, ``calc.py:``, ``Change `src/a.py`:``,
```` ```python calc.py ````. Every reader of such replies (the ``search_replace`` format, an agent's
code blocks) reads the path here, so they accept the same spellings.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from corolla.assistant.errors import MalformedReplyError
from corolla.assistant.languages import fence_language

OPEN = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")  # an opening (or closing) fence line
_PATH_CHARS = re.compile(r"^[\w.\-/\\@+~%=,]+$")
_QUOTED = re.compile(r"`([^`\s]+)`")
_LEAD = re.compile(r"^(?:#+|//+|>+)\s*|^[-*+]\s+")  # a markdown heading, a comment, a quote, a list item
_LABEL = re.compile(r"^(?:file(?:name)?|path)\s*:\s*", re.IGNORECASE)
_WRAP = "*`'\""  # emphasis and quotes around a path (underscores only in pairs: __init__.py)


class Block(NamedTuple):
    info: str  # the fence's info string ("python", "python calc.py", "")
    body: list[str]  # the lines between the fences
    line: int  # the index of the opening fence's line in the reply


def fenced_blocks(reply: str) -> list[Block]:
    """The fenced code blocks of ``reply``; raises :class:`MalformedReplyError` on an unclosed fence."""
    lines = reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        start, fence, info = i, m.group("fence"), m.group("info")
        close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise MalformedReplyError(
                "the code block is not closed with ``` (the reply may have been cut off); "
                "reply with the complete code in one closed block")
        blocks.append(Block(info, body, start))
        i += 1
    return blocks


def looks_like_path(text: str) -> bool:
    """A path has no spaces and a dot or slash ("src/app.py"; "Makefile" alone is not recognised)."""
    return bool(text) and _PATH_CHARS.match(text) is not None and ("." in text or "/" in text) \
        and not set(text) <= set(".")


def clean_path(text: str) -> str:
    """``text`` without the decoration around a path: heading, comment and list markers, a "File:" label,
    quotes, emphasis and a trailing colon."""
    text = text.strip()
    while True:
        before = text
        text = _LABEL.sub("", _LEAD.sub("", text)).rstrip(":").strip().strip(_WRAP).strip()
        if len(text) > 1 and text[0] == text[-1] == "_":
            text = text[1:-1]
        if text == before:
            return text


def named_path(line: str) -> str | None:
    """The path that a line before a block names: the whole line once undecorated, else the last path
    in backticks (``Change `src/a.py`:``); None when it names none."""
    candidate = clean_path(line)
    if looks_like_path(candidate):
        return candidate
    quoted = [q for q in _QUOTED.findall(line) if looks_like_path(q)]
    return quoted[-1] if quoted else None


def path_words(text: str) -> list[str]:
    """Every word of ``text`` that is a path once undecorated, in order (``python calc.py`` -> calc.py;
    ``Here is the new calc.py:`` -> calc.py)."""
    return [word for word in map(clean_path, text.split()) if looks_like_path(word)]


# --- writing a fenced block ------------------------------------------------------------------------
def code_block(header: str, body: str, path: str = "") -> str:
    """``header`` then ``body`` in a fence longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`{3,}", body)), default=2)
    fence = "`" * (longest + 1)
    return f"{header}\n{fence}{fence_language(path)}\n{body}\n{fence}"
