"""The definitions around a line (tree-sitter): what a selection or a changed line is inside of.

A selection of a function's body without its ``def`` line leaves a model guessing which function it
reads (it guessed wrong, issue 20); :func:`scope_note` names the enclosing definitions whose headers
lie above the selection, with their line numbers. :func:`scopes_at` gives their extents too, so
that a review can show the whole function around a changed line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corolla.assistant.context.symbols import _CONTAINER_KINDS, _TABLES, symbol_language
from corolla.assistant.languages import parser

MAX_HEADER_CHARS = 120  # a long header (many parameters) is cut with "…"
MAX_PARSE_CHARS = 256_000
_FUNCTION_VALUES = {"arrow_function", "function_expression", "function"}


@dataclass(frozen=True)
class Scope:
    kind: str  # class | function | method | ... (as in the symbol index)
    name: str
    start_line: int  # 1-based, the header's first line (decorators not included)
    end_line: int  # 1-based, the definition's last line
    header: str  # the header on one line: "def dedent(text):", "class TextWrapper:"
    body_line: int  # 1-based, the first line after the header (where the body starts)


def scopes_at(source: str, path: str, line: int) -> list[Scope]:
    """The definitions of ``source`` (the text of ``path``) that contain ``line`` (1-based), outermost
    first; [] for a language without a symbol table or a file too big to parse."""
    parsed = _parse(source, path)
    if parsed is None:
        return []
    node, lines, language = parsed
    row = line - 1
    out: list[Scope] = []
    while True:
        node = next((c for c in node.named_children if c.start_point.row <= row <= c.end_point.row), None)
        if node is None:
            return out
        scope = _scope(node, lines, language, out[-1] if out else None)
        if scope is not None:
            out.append(scope)


def all_scopes(source: str, path: str) -> list[Scope]:
    """Every definition of ``source``, nested ones included, in the order of their headers."""
    parsed = _parse(source, path)
    if parsed is None:
        return []
    root, lines, language = parsed
    out: list[Scope] = []
    stack = [(child, None) for child in reversed(root.named_children)]
    while stack:
        node, parent = stack.pop()
        scope = _scope(node, lines, language, parent)
        inner = scope if scope is not None else parent
        stack.extend((child, inner) for child in reversed(node.named_children))
        if scope is not None:
            out.append(scope)
    return out


def _parse(source: str, path: str):
    language = symbol_language(path)
    if language is None or len(source) > MAX_PARSE_CHARS:
        return None
    data = source.encode("utf-8", "replace")
    return parser(language).parse(data).root_node, data.split(b"\n"), language


def _scope(node, lines: list[bytes], language: str, parent: Scope | None) -> Scope | None:
    """``node`` as a Scope if it is a definition (``parent``: the innermost one around it)."""
    entry = _TABLES[language][0].get(node.type)
    if entry is None:
        return None
    kind = entry[0]
    body = node.child_by_field_name("body")
    if node.type == "variable_declarator":  # const f = () => {...}
        value = node.child_by_field_name("value")
        if value is None or value.type not in _FUNCTION_VALUES:
            return None
        body = value.child_by_field_name("body")
    if kind == "function" and parent is not None and parent.kind in _CONTAINER_KINDS:
        kind = "method"
    start = node.start_point.row
    if body is None:
        header_end = start
    else:  # the body's first row, if the header ends on it ("{" or a one-line def), else the row before
        b_row, b_col = body.start_point.row, body.start_point.column
        before = lines[b_row][:b_col] if b_row < len(lines) else b""
        header_end = max(start, b_row if before.strip() else b_row - 1)
    name_node = node.child_by_field_name("type" if node.type == "impl_item" else "name")
    name = name_node.text.decode("utf-8", "replace") if name_node is not None else ""
    text = " ".join(x.decode("utf-8", "replace").strip() for x in lines[start:header_end + 1])
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > MAX_HEADER_CHARS:
        text = text[:MAX_HEADER_CHARS - 1].rstrip() + "…"
    return Scope(kind, name, start + 1, node.end_point.row + 1, text, header_end + 2)


def enclosing(source: str, path: str, first_line: int, last_line: int | None = None) -> list[Scope]:
    """The definitions that lines ``first_line``..``last_line`` start inside of, whose headers are above
    them (so not among them), outermost first. Blank lines at the start of the range are skipped."""
    lines = source.splitlines()
    last = min(last_line or first_line, len(lines))
    line = first_line
    while line < last and not lines[line - 1].strip():
        line += 1
    return [s for s in scopes_at(source, path, line) if s.start_line < first_line]


def scope_note(source: str, path: str, first_line: int, last_line: int | None = None) -> str:
    """One sentence naming what the lines are inside of, e.g. "These lines are inside `def dedent(text):`
    (line 419), whose header is not part of them."; "" when they are at the top level."""
    scopes = enclosing(source, path, first_line, last_line)
    if not scopes:
        return ""
    chain = " > ".join(f"`{s.header}` (line {s.start_line})" for s in scopes)
    whose = "whose header is" if len(scopes) == 1 else "whose headers are"
    return f"These lines are inside {chain}, {whose} not part of them."
