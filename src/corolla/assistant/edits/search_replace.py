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

_HEAD = re.compile(r"^\s*<{5,9}\s*SEARCH\b\s*>?\s*:?\s*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_TAIL = re.compile(r"^\s*>{5,9}\s*REPLACE\b\s*<?\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(?P<info>[^`\s]*)\s*$")
_PATH_CHARS = re.compile(r"^[\w.\-/\\@+~%=,]+$")
_QUOTED = re.compile(r"`([^`\s]+)`")
_PATH_NOISE = "`*'\":#> \t"


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
    """The file path written just before the SEARCH line (skipping blank and fence lines)."""
    j = head - 1
    while j >= 0:
        line = lines[j]
        fence = _FENCE.match(line)
        if fence:
            info = fence.group("info")
            if _looks_like_path(info):
                return _clean_path(info)
            j -= 1
            continue
        if not line.strip():
            j -= 1
            continue
        candidate = _clean_path(line)
        if _looks_like_path(candidate):
            return candidate
        quoted = [q for q in _QUOTED.findall(line) if _looks_like_path(q)]  # "Change `src/a.py`:"
        return quoted[-1] if quoted else None
    return None


def _clean_path(text: str) -> str:
    text = text.strip().strip(_PATH_NOISE)
    for prefix in ("file:", "filename:", "path:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):].strip().strip(_PATH_NOISE)
    return text


def _looks_like_path(text: str) -> bool:
    """A path has no spaces and a dot or slash ("src/app.py", "Makefile" is not recognised alone)."""
    return bool(text) and _PATH_CHARS.match(text) is not None and ("." in text or "/" in text) \
        and not set(text) <= set(".")


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)
