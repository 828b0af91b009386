"""Find where an edit's ``old`` text is in a file, tolerating what small models get wrong.

Three stages, stopping at the first that finds something:

1. exact: ``old`` occurs once (or once at the expected line);
2. whitespace-insensitive: the same lines ignoring indentation and trailing spaces; the replacement is
   re-indented by the difference, so a model that dropped the indentation still edits a method body;
3. fuzzy: the window of lines most similar to ``old`` (difflib ratio >= ``threshold``), if unique.

Several equally good places raise :class:`AmbiguousMatchError`; none raises :class:`NoMatchError`
whose message shows the closest lines with their numbers, for the user or the model to correct.
All text here uses "\\n" newlines; :func:`corolla.assistant.edits.proposal.propose` converts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from corolla.assistant.errors import AmbiguousMatchError, NoMatchError

DEFAULT_THRESHOLD = 0.85
_SHOW_LINES = 12
_CANDIDATES = 4  # distinct places the cheap pre-selection hands to difflib


@dataclass(frozen=True)
class Replaced:
    """The file content after one replacement, and a note of how ``old`` was found."""

    content: str
    note: str
    line: int  # 1-based line where the replaced text started


def replace_once(content: str, old: str, new: str, *, path: str, line: int | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> Replaced:
    """Replace the one place ``old`` is in ``content`` by ``new`` (see the module docstring)."""
    if not old:
        raise ValueError("old must not be empty (an empty old text creates or appends)")
    hit = _exact(content, old, new, path, line)
    if hit is not None:
        return hit
    lines = content.splitlines(keepends=True)
    old_lines, new_lines = _trim_blank_edges(old.splitlines(keepends=True), new.splitlines(keepends=True))
    if not old_lines:
        raise NoMatchError(f"{path}: the text to replace has only blank lines and is not in the file; "
                           "copy a few non-blank lines from the file")
    hit = _loose(lines, old_lines, new_lines, path, line)
    if hit is not None:
        return hit
    return _fuzzy(lines, old_lines, new_lines, path, line, threshold)


# --- stage 1: exact ------------------------------------------------------------------------------
def _exact(content: str, old: str, new: str, path: str, line: int | None) -> Replaced | None:
    starts = []
    i = content.find(old)
    while i >= 0:
        starts.append(i)
        i = content.find(old, i + 1)
    if not starts:
        return None
    if line is not None and len(starts) > 1:
        at = _offset_of_line(content, line)
        if at in starts:
            starts = [at]
    if len(starts) > 1:
        # prefer the occurrences that start at a line start (a SEARCH block is whole lines)
        aligned = [s for s in starts if s == 0 or content[s - 1] == "\n"]
        if len(aligned) == 1:
            starts = aligned
    if len(starts) > 1:
        numbers = [content.count("\n", 0, s) + 1 for s in starts]
        raise AmbiguousMatchError(
            f"{path}: the text to replace occurs {len(starts)} times (lines "
            f"{', '.join(map(str, numbers[:10]))}); include more surrounding lines so it is unique")
    s = starts[0]
    number = content.count("\n", 0, s) + 1
    return Replaced(content[:s] + new + content[s + len(old):], f"{path}: matched exactly at line {number}",
                    number)


def _offset_of_line(content: str, line: int) -> int:
    offset = 0
    for _ in range(line - 1):
        nl = content.find("\n", offset)
        if nl < 0:
            return -1
        offset = nl + 1
    return offset


# --- stage 2: ignoring indentation and trailing whitespace ---------------------------------------
def _loose(lines: list[str], old_lines: list[str], new_lines: list[str], path: str,
           line: int | None) -> Replaced | None:
    want = [x.strip() for x in old_lines]
    n = len(want)
    starts = [i for i in range(len(lines) - n + 1)
              if all(lines[i + k].strip() == want[k] for k in range(n))]
    if not starts:
        return None
    start = _pick(starts, line, path, "ignoring whitespace")
    window = lines[start:start + n]
    body, delta = _splice_body(window, old_lines, new_lines)
    note = f"{path}: matched ignoring whitespace at line {start + 1}{delta}"
    return Replaced("".join(lines[:start] + body + lines[start + n:]), note, start + 1)


# --- stage 3: fuzzy ------------------------------------------------------------------------------
def _fuzzy(lines: list[str], old_lines: list[str], new_lines: list[str], path: str, line: int | None,
           threshold: float) -> Replaced:
    n = len(old_lines)
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(_norm(old_lines))

    def ratio(start: int, size: int) -> float:
        matcher.set_seq1(_norm(lines[start:start + size]))
        return matcher.ratio()

    first_old, last_old = old_lines[0].strip(), old_lines[-1].strip()

    def rank(p: tuple[float, int, int]) -> tuple[bool, int, float, int]:
        # among good enough windows, prefer one that starts and ends on the block's first and last
        # lines: a dropped line makes a shorter window score higher, yet cut the block short
        r, s, size = p
        ends = (lines[s].strip() == first_old) + (lines[s + size - 1].strip() == last_old)
        return r >= threshold, ends, r, -s

    # difflib is quadratic: score a few distinct places at the block's size, then try one line more
    # or less (a line the model added or dropped) around those that are nearly the best
    places = {start: (ratio(start, min(n, len(lines))), start, min(n, len(lines)))
              for start in _candidate_starts(lines, old_lines)}
    near = max((p[0] for p in places.values()), default=0.0) - 0.05
    for start, found in list(places.items()):
        if found[0] < near:
            continue
        for s in (start - 1, start, start + 1):
            for size in {max(1, n - 1), n, n + 1}:
                if s >= 0 and s + size <= len(lines) and (s, size) != found[1:]:
                    places[start] = max(places[start], (ratio(s, size), s, size), key=rank)
    scored = sorted(places.values(), key=lambda p: (-p[0], p[1]))
    if not scored or scored[0][0] < threshold:
        raise NoMatchError(_no_match_message(path, lines, old_lines, scored))
    best = scored[0][0]
    top = [p for p in scored if abs(p[0] - best) < 1e-9]
    if len(top) > 1:
        starts = sorted(p[1] for p in top)
        ranked = sorted(top, key=lambda p: abs(p[1] + 1 - line)) if line is not None else top
        if line is None or abs(ranked[0][1] + 1 - line) == abs(ranked[1][1] + 1 - line):
            _raise_ambiguous(path, starts, "fuzzily")
        top = ranked
    ratio_, start, size = top[0]
    window = lines[start:start + size]
    body, delta = _splice_body(window, old_lines, new_lines)
    note = (f"{path}: matched fuzzily (similarity {ratio_:.2f}) at lines {start + 1}-{start + size}{delta}; "
            "check the diff")
    return Replaced("".join(lines[:start] + body + lines[start + size:]), note, start + 1)


def _candidate_starts(lines: list[str], old_lines: list[str], keep: int = _CANDIDATES) -> list[int]:
    """The starts of up to ``keep`` distinct (non-overlapping) windows most like ``old_lines``.

    Scored line by line with a cheap trigram overlap: difflib on every window of a long file takes
    minutes, this linear pre-selection leaves it a handful. Ties keep the earlier start.
    """
    n = len(old_lines)
    if len(lines) <= n:
        return [0] if lines else []
    want = [(x.strip(), _trigrams(x)) for x in old_lines]
    have = [(x.strip(), _trigrams(x)) for x in lines]

    def sim(a: tuple[str, frozenset[str]], b: tuple[str, frozenset[str]]) -> float:
        if a[0] == b[0]:
            return 1.0
        return 2 * len(a[1] & b[1]) / (len(a[1]) + len(b[1])) if a[1] and b[1] else 0.0

    scores = sorted(((sum(sim(have[start + k], want[k]) for k in range(n)), start)
                     for start in range(len(lines) - n + 1)), key=lambda s: (-s[0], s[1]))
    chosen: list[int] = []
    for _, start in scores:
        if all(abs(start - c) >= n for c in chosen):
            chosen.append(start)
            if len(chosen) == keep:
                break
    return chosen


def _trigrams(text: str) -> frozenset[str]:
    text = text.strip()
    return frozenset(text[i:i + 3] for i in range(max(1, len(text) - 2))) if text else frozenset()


def _norm(lines: list[str]) -> str:
    return "\n".join(x.strip() for x in lines)


def _no_match_message(path: str, lines: list[str], old_lines: list[str],
                      scored: list[tuple[float, int, int]]) -> str:
    head = old_lines[0].strip()
    msg = (f"{path}: the text to replace was not found (not exactly, not ignoring whitespace, "
           f"not fuzzily); it starts with {head!r}.")
    if not lines or not scored:
        return msg + f" {path} is empty."
    ratio, start, size = max(scored, key=lambda s: (s[0], -s[1]))
    shown = lines[start:start + min(size, _SHOW_LINES)]
    width = len(str(start + len(shown)))
    listing = "".join(f"{start + k + 1:>{width}} | {text.rstrip()}\n" for k, text in enumerate(shown))
    more = "" if size <= _SHOW_LINES else f"{'':>{width}} | ...\n"
    return (f"{msg} The closest lines in {path} (similarity {ratio:.2f}) are:\n{listing}{more}"
            "Copy the lines to replace exactly as they are in the file.")


# --- shared --------------------------------------------------------------------------------------
def _pick(starts: list[int], line: int | None, path: str, how: str) -> int:
    if len(starts) == 1:
        return starts[0]
    if line is not None:
        ranked = sorted(starts, key=lambda s: abs(s + 1 - line))
        if abs(ranked[0] + 1 - line) != abs(ranked[1] + 1 - line):
            return ranked[0]
    _raise_ambiguous(path, starts, how)
    raise AssertionError("unreachable")


def _raise_ambiguous(path: str, starts: list[int], how: str) -> None:
    numbers = ", ".join(str(s + 1) for s in starts[:10])
    raise AmbiguousMatchError(f"{path}: the text to replace matches {len(starts)} places {how} (lines {numbers}); "
                              "include more surrounding lines so it is unique")


def _trim_blank_edges(old: list[str], new: list[str]) -> tuple[list[str], list[str]]:
    """Drop blank lines around ``old`` (and as many around ``new``): models add or drop them freely."""
    lead = 0
    while lead < len(old) and not old[lead].strip():
        lead += 1
    tail = 0
    while tail < len(old) - lead and not old[len(old) - 1 - tail].strip():
        tail += 1
    old = old[lead:len(old) - tail]
    while lead and new and not new[0].strip():
        new, lead = new[1:], lead - 1
    while tail and new and not new[-1].strip():
        new, tail = new[:-1], tail - 1
    return old, new


def _splice_body(window: list[str], old_lines: list[str], new_lines: list[str]) -> tuple[list[str], str]:
    """``new_lines`` re-indented from ``old_lines``' indentation to the window's, and a note of the shift."""
    src, dst = base_indent(old_lines), base_indent(window)
    body = reindent(new_lines, src, dst)
    if body and not body[-1].endswith("\n"):
        body[-1] += "\n"
    if window and not window[-1].endswith("\n") and body:
        body[-1] = body[-1].rstrip("\n")  # the window ended the file without a newline: keep it so
    if src == dst:
        return body, ""
    if set(src + dst) <= {" "}:
        return body, f" (re-indented by {len(dst) - len(src):+d} spaces)"
    return body, " (re-indented)"


def base_indent(lines: list[str]) -> str:
    """The smallest leading whitespace of the non-blank lines (the block's own indentation)."""
    indents = [x[:len(x) - len(x.lstrip())] for x in lines if x.strip()]
    if not indents:
        return ""
    return min(indents, key=len)


def reindent(lines: list[str], src: str, dst: str) -> list[str]:
    """Move ``lines`` from base indentation ``src`` to ``dst``, keeping their relative indentation."""
    if src == dst:
        return list(lines)
    out = []
    for text in lines:
        if not text.strip():
            out.append(text)
            continue
        ws = text[:len(text) - len(text.lstrip())]
        if text.startswith(src):
            out.append(dst + text[len(src):])
        elif set(src + dst + ws) <= {" "} or set(src + dst + ws) <= {"\t"}:
            ch = (src + dst + ws)[0]
            out.append(ch * max(0, len(ws) + len(dst) - len(src)) + text.lstrip())
        else:
            out.append(text)
    return out
