"""The ``search_replace`` format: aider-style SEARCH/REPLACE blocks, parsed tolerantly.

::

    path/to/file.py
    <<<<<<< SEARCH
    old lines
    =======
    new lines
    >>>>>>> REPLACE

Tolerated: 5 to 9 marker characters, any case, stray spaces, CRLF, blocks inside or outside ```
fences, several blocks and files in one reply, and a missing path line (the previous block's path,
else ``default_path``). An empty SEARCH creates a file (or fills an empty one, or appends).
Unterminated blocks and missing dividers raise :class:`MalformedReplyError` saying which block.
"""

from __future__ import annotations

import re

from corolla.assistant.edits.types import Edit, Target
from corolla.assistant.errors import MalformedReplyError
from corolla.assistant.fences import OPEN, named_path, path_words

_HEAD = re.compile(r"^\s*<{5,9}\s*SEARCH\b\s*>?\s*:?\s*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_TAIL = re.compile(r"^\s*>{5,9}\s*REPLACE\b\s*<?\s*$", re.IGNORECASE)


def parse_search_replace(reply: str, *, default_path: str | None = None,
                         target: Target | None = None) -> list[Edit]:
    """The edits of every SEARCH/REPLACE block in ``reply``, in order."""
    if default_path is None and target is not None:
        default_path = target.path
    lines = reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    edits: list[Edit] = []
    path = default_path
    i = 0
    number = 0
    while i < len(lines):
        if _DIVIDER.match(lines[i]) and _block_follows_divider(lines, i):
            number += 1
            raise MalformedReplyError(
                f"block {number}: '=======' without a '<<<<<<< SEARCH' line before it; "
                "start each block with '<<<<<<< SEARCH'")
        if not _HEAD.match(lines[i]):
            if _TAIL.match(lines[i]):
                raise MalformedReplyError(
                    f"block {number + 1}: '>>>>>>> REPLACE' without a '<<<<<<< SEARCH' block before it")
            i += 1
            continue
        number += 1
        path = _path_before(lines, i) or path
        if path is None:
            raise MalformedReplyError(
                f"block {number}: no file path; write the file's path on the line before '<<<<<<< SEARCH'")
        search, i = _section(lines, i + 1, number, path, until=_DIVIDER, what="'======='")
        replace, i = _section(lines, i + 1, number, path, until=_TAIL, what="'>>>>>>> REPLACE'")
        edits.append(Edit(path=path, old=_join(search), new=_join(replace)))
        i += 1
    if not edits:
        raise MalformedReplyError(
            "the reply has no SEARCH/REPLACE block; write each change as a file path line, then "
            "'<<<<<<< SEARCH', the exact old lines, '=======', the new lines, '>>>>>>> REPLACE'")
    return edits


def _section(lines: list[str], i: int, number: int, path: str, *, until: re.Pattern[str],
             what: str) -> tuple[list[str], int]:
    """The lines from ``i`` up to the line matching ``until``, and that line's index."""
    body: list[str] = []
    while i < len(lines):
        line = lines[i]
        if until.match(line):
            return body, i
        for marker, name in ((_HEAD, "'<<<<<<< SEARCH'"), (_DIVIDER, "'======='"), (_TAIL, "'>>>>>>> REPLACE'")):
            if marker is not until and marker.match(line):
                raise MalformedReplyError(
                    f"block {number} ({path}): found {name} at reply line {i + 1} where {what} was expected; "
                    "each block is '<<<<<<< SEARCH', old lines, '=======', new lines, '>>>>>>> REPLACE'")
        body.append(line)
        i += 1
    raise MalformedReplyError(f"block {number} ({path}) is not terminated: {what} is missing")


def _block_follows_divider(lines: list[str], i: int) -> bool:
    """A divider outside a block is an error only if a REPLACE tail follows (not a markdown rule)."""
    for line in lines[i + 1:]:
        if _HEAD.match(line):
            return False
        if _TAIL.match(line):
            return True
    return False


def _path_before(lines: list[str], head: int) -> str | None:
    """The file path written just before the SEARCH line (skipping blank lines and fences without a path)."""
    for line in reversed(lines[:head]):
        fence = OPEN.match(line)
        if fence:
            paths = path_words(fence.group("info"))
            if paths:
                return paths[0]
        elif line.strip():
            return named_path(line)
    return None


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)
