"""A diff as a reviewer reads it: each change inside the whole function it belongs to, numbered.

A small model handed a bare ``git diff`` of one changed line listed generic advice and missed the bug
(issue 20): it saw three lines of context, no function, and no line numbers to cite. Here each hunk
is widened to the function around it (tree-sitter, :mod:`corolla.assistant.context.enclosing`; the
whole function when it is at most :data:`MAX_SCOPE_LINES` long, else its header and
:data:`WIDE_CONTEXT` lines either side), every line is numbered as in the new file (removed lines
have no number), and a changed line is summed up under the block ("line 415: `split()` became
`split(',')`"), so the model can compare the two and cite ``FILE:LINE``.

Input is a unified diff (``git diff``) and a way to read a file's new text; a file whose new text is
not there (deleted) or whose language is not known shows its hunks as the diff has them.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Callable

from corolla.assistant.context.enclosing import all_scopes
from corolla.assistant.fences import code_block

MAX_SCOPE_LINES = 60  # a function up to this long is shown whole around its change
WIDE_CONTEXT = 10  # lines either side of a change in a longer function (or at the top level)
MAX_SUMMARY_CHARS = 60  # of each side of a one-line change's summary
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclasses.dataclass
class Hunk:
    old_start: int
    new_start: int
    rows: list[tuple[str, str]]  # (" " | "-" | "+", line text)


@dataclasses.dataclass
class FileDiff:
    old_path: str | None  # None: a new file
    new_path: str | None  # None: a deleted file
    hunks: list[Hunk]
    binary: bool = False

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or "?"


def parse_diff(text: str) -> list[FileDiff]:
    """The files and hunks of a unified diff (git's, with ``a/`` and ``b/`` prefixes)."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    hunk: Hunk | None = None
    for line in text.splitlines():
        if line.startswith("diff --git "):
            names = line[len("diff --git "):].split(" b/")
            current = FileDiff(names[0].removeprefix("a/"), names[-1] if len(names) > 1 else None, [])
            files.append(current)
            hunk = None
        elif current is None:
            continue
        elif hunk is None and line.startswith("--- "):
            current.old_path = None if line[4:] == "/dev/null" else line[4:].removeprefix("a/")
        elif hunk is None and line.startswith("+++ "):
            current.new_path = None if line[4:] == "/dev/null" else line[4:].removeprefix("b/")
        elif line.startswith("Binary files "):
            current.binary = True
        elif match := _HUNK.match(line):
            hunk = Hunk(int(match[1]), int(match[3]), [])
            current.hunks.append(hunk)
        elif hunk is not None and line[:1] in (" ", "-", "+"):
            hunk.rows.append((line[:1], line[1:]))
        elif hunk is not None and line == "":
            hunk.rows.append((" ", ""))
    return files


@dataclasses.dataclass(frozen=True)
class _Row:
    mark: str  # " ", "-", "+"
    text: str
    new_line: int | None  # its number in the new file (None for a removed line)
    anchor: int  # the new-file line it sits at (a removed line: the next line's)


def _rows(diff: FileDiff, new_text: str | None) -> list[_Row]:
    """Every line of the new file, with the diff's removed lines in place; only the hunks without a new text."""
    rows: list[_Row] = []
    lines = new_text.splitlines() if new_text is not None else None
    line = 1
    for hunk in diff.hunks:
        start = hunk.new_start if hunk.rows and any(m != "-" for m, _ in hunk.rows) else hunk.new_start + 1
        if lines is not None:
            while line < start and line <= len(lines):
                rows.append(_Row(" ", lines[line - 1], line, line))
                line += 1
        line = start
        for mark, text in hunk.rows:
            if mark == "-":
                rows.append(_Row("-", text, None, line))
            else:
                rows.append(_Row(mark, text, line, line))
                line += 1
    if lines is not None:
        while line <= len(lines):
            rows.append(_Row(" ", lines[line - 1], line, line))
            line += 1
    return rows


def _windows(rows: list[_Row], path: str, new_text: str | None, context: int, widen: bool) -> list[tuple[int, int]]:
    """Row index ranges [a, b] to show: each change with its function (``widen``) or ``context`` lines."""
    scopes = all_scopes(new_text, path) if widen and new_text is not None else []
    anchors = [r.anchor for r in rows]  # nondecreasing
    spans: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        if row.mark == " ":
            continue
        lo, hi = row.anchor - context, row.anchor + context
        if widen and new_text is not None:
            around = [s for s in scopes if s.start_line <= row.anchor <= s.end_line]
            inner = around[-1] if around else None  # headers in order: the innermost comes last
            if inner is not None and inner.end_line - inner.start_line + 1 <= MAX_SCOPE_LINES:
                lo, hi = inner.start_line, inner.end_line
            else:
                lo, hi = row.anchor - WIDE_CONTEXT, row.anchor + WIDE_CONTEXT
            for scope in around:  # the header lines of the class, of a long function...: on their own
                if scope.start_line < lo:
                    head = bisect.bisect_left(anchors, scope.start_line)
                    spans.append((head, head))
        a, b = bisect.bisect_left(anchors, lo), bisect.bisect_right(anchors, hi) - 1
        spans.append((min(a, i), max(b, i)))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _summary(rows: list[_Row]) -> list[str]:
    """"line N: `old` became `new`" for each changed line replaced one for one (a run of k removed lines
    followed by k added lines)."""
    out = []
    i = 0
    while i < len(rows):
        if rows[i].mark != "-":
            i += 1
            continue
        j = i
        while j < len(rows) and rows[j].mark == "-":
            j += 1
        k = j
        while k < len(rows) and rows[k].mark == "+":
            k += 1
        if j - i == k - j:
            for old, new in zip(rows[i:j], rows[j:k]):
                if old.text.strip() != new.text.strip():
                    a, b = _changed_part(old.text, new.text)
                    what = f"`{a}` became `{b}`" if a and b else f"`{b}` was added" if b else f"`{a}` was removed"
                    out.append(f"line {new.new_line}: {what}")
        i = k
    return out


_NAME = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
_OPERATOR = set("<>=!+-*/%&|^~")


def _changed_part(old: str, new: str) -> tuple[str, str]:
    """The part of a line that changed, widened to the name, call or operator around it (``split()`` ->
    ``split(',')``, ``<`` -> ``<=``, ``_v(m1, m2, h)`` -> ``_v(m2, m1, h)``)."""
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    s = 0
    while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
        s += 1
    a, e_old, e_new = p, len(old) - s, len(new) - s
    while a > 0 and p - a < MAX_SUMMARY_CHARS // 2:
        c = old[a - 1]
        call = c in "([" and a > 1 and old[a - 2] in _NAME  # the bracket of a call or subscript, not a group's
        if c in _NAME or c in _OPERATOR and (a == p or old[a] in _OPERATOR) or call:
            a -= 1
        else:
            break
    while e_old < len(old) and e_new < len(new) and old[e_old] == new[e_new] and e_old - a < MAX_SUMMARY_CHARS \
            and (_open(old[a:e_old]) or _open(new[a:e_new]) or old[e_old] in _NAME):
        e_old, e_new = e_old + 1, e_new + 1
    return _clip(old[a:e_old].strip().lstrip(".")), _clip(new[a:e_new].strip().lstrip("."))


def _open(text: str) -> bool:
    return text.count("(") > text.count(")") or text.count("[") > text.count("]") or text.count("{") > text.count("}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY_CHARS else text[:MAX_SUMMARY_CHARS - 1] + "…"


def render_file(diff: FileDiff, new_text: str | None, *, widen: bool = True, context: int = 3) -> str:
    """One file's changes: a fenced block of numbered lines (``+``/``-`` marks), then one-line summaries."""
    path = diff.path
    if diff.binary:
        return f"{path}: a binary file changed"
    if new_text is None and diff.new_path is None:
        what = f"{path} was deleted"
        return what if not diff.hunks else what + ":\n" + _block(path, _rows(diff, None), [(0, 10**9)])
    rows = _rows(diff, new_text)
    if not any(r.mark != " " for r in rows):
        return f"{path}: renamed or mode changed, no line changed" if not diff.hunks else ""
    windows = _windows(rows, path, new_text, context, widen)
    head = f"{path} (new file)" if diff.old_path is None else path
    out = head + "\n" + _block(path, rows, windows)
    summary = _summary(rows)
    if summary:
        out += "\nChanged lines:\n" + "\n".join(f"- {x}" for x in summary)
    return out


def _block(path: str, rows: list[_Row], windows: list[tuple[int, int]]) -> str:
    width = max((len(str(r.new_line)) for r in rows if r.new_line), default=1)
    lines: list[str] = []
    for n, (a, b) in enumerate(windows):
        if n or a > 0:
            lines.append("…")
        for row in rows[a:min(b, len(rows) - 1) + 1]:
            number = str(row.new_line) if row.new_line is not None else ""
            lines.append(f"{number:>{width}} {row.mark}{row.text}")
    if windows and windows[-1][1] < len(rows) - 1:
        lines.append("…")
    return code_block("", "\n".join(lines), path).lstrip("\n")


def render_changes(diff_text: str, new_text: Callable[[str], str | None], limit_chars: int) -> str:
    """The whole diff for review, within ``limit_chars``: with whole functions when they fit, else with
    three lines of context; files that still do not fit are named at the end."""
    files = parse_diff(diff_text)
    parts: list[str] = []
    if len(diff_text) <= limit_chars:  # else not even the bare diff fits: no file is read
        texts = {f.path: (new_text(f.new_path) if f.new_path else None) for f in files}
        parts = [render_file(f, texts[f.path]) for f in files]
    if not parts or sum(len(p) + 2 for p in parts) > limit_chars:
        parts = [render_file(f, None, widen=False) for f in files]
    kept, left, size = [], [], 0
    for f, part in zip(files, parts):
        if not part:
            continue
        if size + len(part) + 2 <= limit_chars:
            kept.append(part)
            size += len(part) + 2
        else:
            left.append(f.path)
    out = "\n\n".join(kept)
    if left:
        out += ("\n\n" if out else "") + "[not shown, too long: " + ", ".join(left) + "]"
    return out
