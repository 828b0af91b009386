"""Code written in fenced blocks, as an agent's edits: the way a small model changes a file best.

A 0.5B model writes code well in a fenced block (the ``whole`` edit format) and badly as a JSON
string inside a tool call (escapes, cut-off arguments). So a reply without a tool call that holds
code for a file of the workspace is taken as an edit of that file:

    calc.py
    ```python
    def mean(values):
        ...
    ```

The file is named on the line before the fence (``calc.py``, ``**calc.py**``, ``# File: calc.py``) or
in the fence's info string (``python calc.py``), both read by :mod:`corolla.assistant.fences`,
or, for a single block, is the one file the run is about (named in the task or read by the agent).
The block is either the whole new file, or whole
definitions: a block whose first line is a line of the file (``def mean(values):``) replaces the
definition starting there, up to the next line indented as little as it (a closing brace included),
unless it also holds most of the lines outside that definition (then it is the whole file).
Anything else is refused with the reason, to be sent back to the model; nothing here writes a file.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.agent.testing import is_test_file
from corolla.assistant.edits import Edit, Target
from corolla.assistant.edits.whole import resolve_whole
from corolla.assistant.errors import AssistantError, MalformedReplyError
from corolla.assistant.fences import fenced_blocks, named_path, path_words
from corolla.assistant.workspace import normalize, show_text

__all__ = ["Write", "WriteError", "default_file", "find_writes", "mentioned_files"]

WHOLE_FILE_SHARE = 0.6  # a block with this share of the file's lines is the whole new file...
WHOLE_FILE_OUTSIDE = 0.6  # ...or with this share of the lines outside the definition its first line starts
_PATHLIKE = re.compile(r"[\w./-]+\.\w+")


@dataclass(frozen=True)
class Write:
    """One block applied to ``edit.path``: ``how`` is "whole file" or "the definition at line N"."""

    edit: Edit
    how: str


class WriteError(AssistantError):
    """Code blocks that name a file but cannot be applied to it (the reason is for the model)."""

    code = "bad_write"


def mentioned_files(root: Path, text: str) -> list[str]:
    """Workspace files named in ``text`` (in order, once each)."""
    found: list[str] = []
    for word in _PATHLIKE.findall(text):
        rel = _existing(root, word)
        if rel and rel not in found:
            found.append(rel)
    return found


def default_file(files: list[str]) -> str | None:
    """The one file a run is about among ``files`` (tests left out when that leaves one), else None."""
    files = list(dict.fromkeys(files))
    if len(files) <= 1:
        return files[0] if files else None
    sources = [f for f in files if not (is_test_file(f) or f.rsplit("/", 1)[-1] == "conftest.py")]
    return sources[0] if len(sources) == 1 else None


def find_writes(reply: str, root: Path, default_files: list[str]) -> list[Write]:
    """The edits that the code blocks of ``reply`` make to workspace files ([] when it has none).

    ``default_files``: the files the run is about; a single unnamed block goes to
    :func:`default_file` of them. Raises :class:`WriteError` for a block aimed at a file that
    cannot be applied (a fragment that matches no line, an ambiguous one), so the model hears why.
    """
    try:
        blocks = _blocks_with_heading(reply)
    except MalformedReplyError:
        return []  # an unclosed fence: a cut-off answer, not an edit
    named: list[tuple[str, list[str]]] = []
    for heading, info, body in blocks:
        rel = _named_file(root, info) or _named_file(root, heading)
        if rel is None and len(blocks) == 1:
            rel = default_file(default_files)
        if rel is not None and any(x.strip() for x in body):
            named.append((rel, body))
    writes: list[Write] = []
    seen: set[str] = set()
    for rel, body in named:
        if rel in seen:
            raise WriteError(f"two code blocks for {rel}: send the whole new {rel} in one block")
        seen.add(rel)
        writes.append(_write(root, rel, body))
    return writes


def _blocks_with_heading(reply: str) -> list[tuple[str, str, list[str]]]:
    """(the last non-blank line before the fence within two lines, info string, body) per block."""
    lines = reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out = []
    for block in fenced_blocks(reply):
        i = block.line
        heading = next((lines[j] for j in range(i - 1, max(i - 3, -1), -1) if lines[j].strip()), "")
        out.append((heading, block.info, block.body))
    return out


def _named_file(root: Path, text: str) -> str | None:
    """The workspace file that a heading or an info string names: the path it is written as, or else
    the first of its words that is a file of the workspace ("Here is the new calc.py:")."""
    for word in [named_path(text) or "", *path_words(text)]:
        rel = _existing(root, word)
        if rel:
            return rel
    return None


def _existing(root: Path, path: str) -> str | None:
    if not _PATHLIKE.fullmatch(path):
        return None
    try:
        rel, _ = normalize(root, path)
    except AssistantError:
        return None
    return rel if rel and (root / rel).is_file() else None


def _write(root: Path, rel: str, body: list[str]) -> Write:
    source, _ = show_text(root, rel)
    source = source or ""
    code = list(body)
    while code and not code[0].strip():
        code.pop(0)
    file_lines = source.splitlines()
    first = code[0].strip()
    starts = [i for i, x in enumerate(file_lines) if x.strip() == first]
    have = Counter(x.strip() for x in code if x.strip())
    if len(starts) == 1:
        # the definition starting there, unless the block also holds (nearly) all the lines outside it
        start = starts[0]
        end = _definition_end(file_lines, start)
        outside = Counter(x.strip() for x in file_lines[:start] + file_lines[end:] if x.strip())
        if not outside or sum((have & outside).values()) < WHOLE_FILE_OUTSIDE * sum(outside.values()):
            return Write(resolve_whole(code, Target(rel, start + 1, end), source), f"lines {start + 1}-{end}")
        return Write(resolve_whole(code, Target(rel), source), "whole file")
    want = Counter(x.strip() for x in file_lines if x.strip())
    if not want or sum((have & want).values()) >= WHOLE_FILE_SHARE * sum(want.values()):
        return Write(resolve_whole(code, Target(rel), source), "whole file")
    if not starts:
        raise WriteError(
            f"the code block for {rel} is not the whole file and its first line ({first!r}) is not a line of "
            f"{rel}: send the whole new {rel}, or whole functions starting with their unchanged first line")
    raise WriteError(f"the first line of the code block ({first!r}) occurs {len(starts)} times in {rel}: "
                     f"send the whole new {rel}")


def _definition_end(lines: list[str], start: int) -> int:
    """The last line (1-based) of the definition starting at ``start`` (0-based), found by indentation."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    last = start
    for j in range(start + 1, len(lines)):
        text = lines[j]
        if not text.strip():
            continue
        if len(text) - len(text.lstrip()) <= indent:
            if text.strip()[0] in "}])":
                last = j  # the closing brace of a JavaScript/Go/Rust/Java block
            break
        last = j
    return last + 1
