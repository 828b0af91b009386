"""The agent's search tool: text (literal or regex) over the workspace's files, or symbol definitions.

Both honour ``.gitignore`` (:func:`corolla.assistant.context.list_files`), skip binary and huge
files, and cap what they return: a small model is better served by the first 50 hits and a note
saying how to narrow the search than by a thousand lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from corolla.assistant.context import list_files
from corolla.assistant.context.symbols import file_symbols, symbol_language
from corolla.assistant.workspace import show_text

MAX_HITS = 50
MAX_COUNTED = 1000  # beyond this the total is given as "more than"
MAX_LINE_CHARS = 200


@dataclass
class SearchResult:
    hits: list[str] = field(default_factory=list)  # "path:line: text"
    total: int = 0
    files: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _files(root: Path, glob: str | None) -> list[str]:
    files = list_files(root)
    if glob:
        spec = pathspec.GitIgnoreSpec.from_lines([glob])
        files = [f for f in files if spec.match_file(f)]
    return files


def _clip(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " [...]"


def _text_matcher(query: str, ignore_case: bool):
    """Lines containing ``query`` literally, or matching it as a regular expression when it is one."""
    flags = re.IGNORECASE if ignore_case else 0
    literal = query.lower() if ignore_case else query
    try:
        regex = re.compile(query, flags)
    except re.error:
        regex = None

    def match(line: str) -> bool:
        if (literal in line.lower()) if ignore_case else (literal in line):
            return True
        return bool(regex and regex.search(line))
    return match


def search_text(root: Path, query: str, glob: str | None = None, max_hits: int = MAX_HITS) -> SearchResult:
    """Lines of the workspace's files that contain ``query`` (case-insensitively if nothing matches as typed)."""
    files = _files(root, glob)
    result = _scan(root, files, _text_matcher(query, False), max_hits)
    if not result.total and query.lower() != query.upper():
        result = _scan(root, files, _text_matcher(query, True), max_hits)
        if result.total:
            result.notes.append("no match with this exact case; these match ignoring case")
    if not files:
        result.notes.append(f"no files match the glob {glob!r}" if glob else "the workspace has no files")
    return result


def _scan(root: Path, files: list[str], match, max_hits: int) -> SearchResult:
    result = SearchResult()
    for rel in files:
        text, _ = show_text(root, rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if match(line):
                result.total += 1
                result.files.add(rel)
                if len(result.hits) < max_hits:
                    result.hits.append(f"{rel}:{n}: {_clip(line)}")
                if result.total >= MAX_COUNTED:
                    result.notes.append(f"stopped counting at {MAX_COUNTED} matches")
                    return result
    return result


def search_symbols(root: Path, query: str, glob: str | None = None, max_hits: int = MAX_HITS) -> SearchResult:
    """Definitions whose name is ``query`` (listed first) or contains it, ignoring case."""
    q = query.strip().lower()
    exact: list[tuple[str, int, str]] = []
    partial: list[tuple[str, int, str]] = []
    for rel in _files(root, glob):
        if symbol_language(rel) is None:
            continue
        for sym in file_symbols(root, rel):
            name = sym.name.lower()
            if q == name or q in name:
                entry = (rel, sym.line, f"{rel}:{sym.line}: {_clip(sym.signature)}  [{sym.kind} {sym.name}]")
                (exact if q == name else partial).append(entry)
    found = exact + partial
    result = SearchResult(hits=[e[2] for e in found[:max_hits]], total=len(found), files={e[0] for e in found})
    return result
