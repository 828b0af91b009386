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
unless it also holds most of the lines outside that definition (then it is the whole file); a block
whose first line is not in the file but defines a name the file defines once (``def mean(values,
default=None):``: a changed signature) replaces that definition.

A block can also target a line range: ``calc.py:5-6`` (or ``calc.py:5`` for one line, or ``calc.py
(lines 5-6)``) before the fence or in its info string replaces exactly lines 5 to 6 (1-based,
inclusive) with the block; a range outside the file is refused. A run can have a :class:`Focus`, the
lines its task is about (``In calc.py lines 5-6: ...``): the ranges given to the model are kept
current as writes move lines, so a block that names one of them (its old numbers included) goes
where those lines are now, and a block for that file that matches no line or definition replaces
them (as a whole edit of a line range does).
Anything else is refused with the reason, to be sent back to the model; nothing here writes a file:
the edits go through :func:`corolla.assistant.edits.propose` (its syntax and structure checks) and are
applied atomically by the caller.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from corolla.assistant.agent.testing import is_test_file
from corolla.assistant.edits import Edit, Target
from corolla.assistant.edits.whole import resolve_whole
from corolla.assistant.errors import AssistantError, MalformedReplyError
from corolla.assistant.fences import fenced_blocks, named_path, path_words
from corolla.assistant.workspace import normalize, show_text

__all__ = ["Focus", "Write", "WriteError", "default_file", "find_writes", "map_range", "mentioned_files", "named_range",
           "task_ranges"]

WHOLE_FILE_SHARE = 0.6  # a block with this share of the file's lines is the whole new file...
WHOLE_FILE_OUTSIDE = 0.6  # ...or with this share of the lines outside the definition its first line starts
_PATHLIKE = re.compile(r"[\w./-]+\.\w+")
_PATH = r"[\w./@+~%=,-]*\w\.\w+"
# a heading or info string naming a range: "calc.py:5-6", "calc.py:5", "calc.py (lines 5-6)", "calc.py lines 5-6"
_RANGE = re.compile(rf"(?P<path>{_PATH})(?P<how>:|\s*\(?\s*lines?\s+)(?P<a>\d+)(?:\s*[-–]\s*(?P<b>\d+))?(?!\w|:\d)")
# a task naming one the other way round: "lines 5-6 of calc.py"
_RANGE_OF = re.compile(rf"\blines?\s+(?P<a>\d+)(?:\s*[-–]\s*(?P<b>\d+))?\s+(?:of|in)\s+`?(?P<path>{_PATH})")
_DEF = re.compile(r"^(?P<indent>\s*)(?:export\s+)?(?:async\s+)?(?P<kind>def|class|function|func|fn)\s+"
                  r"(?P<name>[A-Za-z_$][\w$]*)")


@dataclass(frozen=True)
class Write:
    """One block applied to ``edit.path``: ``how`` is "whole file" or "lines A-B" (then ``lines`` is (A, B))."""

    edit: Edit
    how: str
    lines: tuple[int, int] | None = None


class WriteError(AssistantError):
    """Code blocks that name a file but cannot be applied to it (the reason is for the model)."""

    code = "bad_write"


@dataclass
class Focus:
    """The line ranges a run is about, per file, kept current as writes change the files.

    ``ranges``: the current lines (1-based, inclusive) of each focused range; ``names``: every range given
    to the model for a file (the task's, and where it moved to), each mapped to the index of its range.
    """

    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    names: dict[str, dict[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)

    def add(self, path: str, a: int, b: int) -> None:
        self.ranges[path] = (a, b)
        self.names.setdefault(path, {})[(a, b)] = (a, b)

    def current(self, path: str) -> tuple[int, int] | None:
        return self.ranges.get(path)

    def resolve(self, path: str, a: int, b: int) -> tuple[int, int]:
        """Where the range ``a-b`` that the model names is now: a range it was given (old numbers too) is
        where those lines moved; any other range is taken as written."""
        known = self.names.get(path, {})
        return self.ranges[path] if (a, b) in known and path in self.ranges else (a, b)

    def moved(self, path: str, before: str | None, after: str, replaced: tuple[int, int] | None = None) -> None:
        """Follow ``path``'s range through a change of the file from ``before`` to ``after``; ``replaced``: the
        lines the change replaced, when it was a range write (then a write of the focused range keeps exactly
        the new lines)."""
        if path not in self.ranges or before is None:
            return
        a, b = self.ranges[path]
        if replaced == (a, b):
            new: tuple[int, int] | None = (a, b + len(after.splitlines()) - len(before.splitlines()))
            if new[1] < a:
                new = None
        else:
            new = map_range(before.splitlines(), after.splitlines(), a, b)
        if new is None:
            del self.ranges[path]
            return
        self.ranges[path] = new
        self.names[path][new] = new

    def follow(self, changes, replaced: dict[str, tuple[int, int] | None] | None = None) -> None:
        """:meth:`moved` for each :class:`FileChange` of an applied proposal."""
        for change in changes:
            self.moved(change.path, change.before, change.after, (replaced or {}).get(change.path))


def map_range(old: list[str], new: list[str], a: int, b: int) -> tuple[int, int] | None:
    """Lines ``a-b`` (1-based, inclusive) of ``old`` in ``new``: unchanged lines keep their place, a changed
    region holding an end moves that end to its own end, lines inserted right after the range join it;
    None when nothing of the range is left."""
    first, last = a - 1, b - 1
    new_first = new_last = None
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if new_first is None and i1 <= first < i2:
            new_first = j1 + (first - i1) if tag == "equal" else j1
        if i1 <= last < i2:
            new_last = j1 + (last - i1) if tag == "equal" else j2 - 1
        elif tag == "insert" and i1 == last + 1 and new_last is not None:
            new_last = j2 - 1
    if new_first is None or new_last is None or new_last < new_first:
        return None
    return new_first + 1, new_last + 1


def named_range(text: str) -> tuple[str, int, int] | None:
    """The path and line range a heading or an info string names (``calc.py:5-6``, ``calc.py (lines 5-6)``)."""
    m = _RANGE.search(text or "")
    if m is None:
        return None
    a = int(m.group("a"))
    return m.group("path"), a, int(m.group("b") or a)


def task_ranges(root: Path, task: str) -> dict[str, tuple[int, int]]:
    """The line ranges of workspace files a task names ("In calc.py lines 5-6: ...", "calc.py:5-6", "lines 5-6
    of calc.py"); not ``calc.py:12`` (a line a traceback quoted in the task points at)."""
    out: dict[str, tuple[int, int]] = {}
    for m in [*_RANGE.finditer(task), *_RANGE_OF.finditer(task)]:
        if "how" in m.groupdict() and m.group("how") == ":" and m.group("b") is None:
            continue  # "calc.py:12" is how tracebacks and compilers point at a line, not a range to change
        rel = _existing(root, m.group("path"))
        a = int(m.group("a"))
        b = int(m.group("b") or a)
        if rel and rel not in out and 1 <= a <= b:
            out[rel] = (a, b)
    return out


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


def find_writes(reply: str, root: Path, default_files: list[str], focus: Focus | None = None) -> list[Write]:
    """The edits that the code blocks of ``reply`` make to workspace files ([] when it has none).

    ``default_files``: the files the run is about; a single unnamed block goes to
    :func:`default_file` of them. ``focus``: the line ranges the run is about (see :class:`Focus`).
    Raises :class:`WriteError` for a block aimed at a file that cannot be applied (a fragment that
    matches no line, an ambiguous one, a range outside the file), so the model hears why.
    """
    try:
        blocks = _blocks_with_heading(reply)
    except MalformedReplyError:
        return []  # an unclosed fence: a cut-off answer, not an edit
    named: list[tuple[str, list[str], tuple[int, int] | None]] = []
    for heading, info, body in blocks:
        rel, lines = _ranged_file(root, info) or _ranged_file(root, heading) or (None, None)
        if rel is None:
            rel = _named_file(root, info) or _named_file(root, heading)
        if rel is None and len(blocks) == 1:
            rel = default_file(default_files)
        if rel is not None and any(x.strip() for x in body):
            if lines is not None and focus is not None:
                lines = focus.resolve(rel, *lines)
            named.append((rel, body, lines))
    writes: list[Write] = []
    seen: set[str] = set()
    for rel, body, lines in named:
        if rel in seen:
            raise WriteError(f"two code blocks for {rel}: send the whole new {rel} in one block")
        seen.add(rel)
        writes.append(_write(root, rel, body, lines, focus.current(rel) if focus is not None else None))
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


def _ranged_file(root: Path, text: str) -> tuple[str, tuple[int, int]] | None:
    """The workspace file and the lines that a heading or an info string names with a range."""
    found = named_range(text)
    if found is None:
        return None
    rel = _existing(root, found[0])
    return (rel, (found[1], found[2])) if rel else None


def _existing(root: Path, path: str) -> str | None:
    if not _PATHLIKE.fullmatch(path):
        return None
    try:
        rel, _ = normalize(root, path)
    except AssistantError:
        return None
    return rel if rel and (root / rel).is_file() else None


def _write(root: Path, rel: str, body: list[str], lines: tuple[int, int] | None = None,
           focus: tuple[int, int] | None = None) -> Write:
    source, _ = show_text(root, rel)
    source = source or ""
    code = list(body)
    while code and not code[0].strip():
        code.pop(0)
    file_lines = source.splitlines()
    if lines is not None:
        return _range_write(rel, code, source, *lines)
    first = code[0].strip()
    if focus is not None and focus[1] <= len(file_lines) and first == file_lines[focus[0] - 1].strip():
        return _range_write(rel, code, source, *focus)  # the focused lines, from their first line on
    starts = [i for i, x in enumerate(file_lines) if x.strip() == first]
    have = Counter(x.strip() for x in code if x.strip())
    if len(starts) == 1:
        start = starts[0]
        end = _definition_end(file_lines, start)
        if end > start + 1 or sum(have.values()) <= 1:
            # the definition starting there, unless the block also holds (nearly) all the lines outside it
            outside = Counter(x.strip() for x in file_lines[:start] + file_lines[end:] if x.strip())
            if not outside or sum((have & outside).values()) < WHOLE_FILE_OUTSIDE * sum(outside.values()):
                return _range_write(rel, code, source, start + 1, end)
            return Write(resolve_whole(code, Target(rel), source), "whole file")
        if start == 0:  # more than the file's first line, which starts no definition: the file from its top
            return Write(resolve_whole(code, Target(rel), source), "whole file")
    want = Counter(x.strip() for x in file_lines if x.strip())
    if not want or sum((have & want).values()) >= WHOLE_FILE_SHARE * sum(want.values()):
        return Write(resolve_whole(code, Target(rel), source), "whole file")
    named = _same_name(file_lines, code)
    if named is not None:
        return _range_write(rel, code, source, named[0] + 1, named[1])
    if focus is not None and focus[1] <= len(file_lines):
        return _range_write(rel, code, source, *focus)
    if len(starts) > 1:
        raise WriteError(f"the first line of the code block ({first!r}) occurs {len(starts)} times in {rel}: "
                         f"send the whole new {rel}")
    where = "starts no definition in" if starts else "is not a line of"
    raise WriteError(
        f"the code block for {rel} is not the whole file and its first line ({first!r}) {where} {rel}: send "
        f"the whole new {rel}, or whole functions starting with their unchanged first line")


def _range_write(rel: str, code: list[str], source: str, a: int, b: int) -> Write:
    """Lines ``a-b`` of ``rel`` replaced by ``code`` (the whole file when the block is plainly all of it)."""
    total = len(source.splitlines())
    if not 1 <= a <= b <= total:
        raise WriteError(f"lines {a}-{b} are not in {rel}: it has {total} lines. Name lines that are in the file "
                         f"({rel}:FIRST-LAST, counted from 1), or send the whole new {rel}")
    edit = resolve_whole(code, Target(rel, a, b), source)
    if edit.line is None:  # the whole file sent back for a range: taken as the whole file
        return Write(edit, "whole file")
    return Write(edit, f"lines {a}-{b}", (a, b))


def _same_name(file_lines: list[str], code: list[str]) -> tuple[int, int] | None:
    """(start, end) of the one definition of the file with the name and kind the block's first definition
    line has (its decorators included), or None: a block whose signature changed."""
    header = next((x for x in code if x.strip() and not x.lstrip().startswith("@")), "")
    m = _DEF.match(header)
    if m is None:
        return None
    found = [i for i, x in enumerate(file_lines)
             if (d := _DEF.match(x)) and d.group("kind") == m.group("kind") and d.group("name") == m.group("name")]
    if len(found) != 1:
        return None
    start = found[0]
    end = _definition_end(file_lines, start)
    indent = file_lines[start][:len(file_lines[start]) - len(file_lines[start].lstrip())]
    while start > 0 and file_lines[start - 1].startswith(indent + "@"):
        start -= 1  # its decorators
    if code[0].lstrip().startswith("@") or start == found[0]:
        return start, end
    return found[0], end  # the block has no decorators: they stay


def _definition_end(lines: list[str], start: int) -> int:
    """The last line (1-based) of the definition starting at ``start`` (0-based), found by indentation
    (a decorator's definition is the one it decorates)."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    while start + 1 < len(lines) and lines[start].lstrip().startswith("@") and \
            len(lines[start + 1]) - len(lines[start + 1].lstrip()) == indent:
        start += 1
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
