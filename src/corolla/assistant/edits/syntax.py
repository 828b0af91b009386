"""The syntax guard: refuse an edit that turns a file that parsed into one that does not.

Python is checked with :func:`ast.parse`; JavaScript, TypeScript, Go, Rust, Java, C and C++ with the
tree-sitter grammars of ``tree_sitter_language_pack`` (imported lazily: only when such a file is
edited). A file that did not parse before the edit is not checked (the user may be mid-edit), and
languages without a parser are never refused.
"""

from __future__ import annotations

import ast
import warnings

from corolla.assistant.errors import SyntaxBreakError
from corolla.assistant.languages import language_of, parser


def first_error(path: str, text: str) -> tuple[int, str] | None:
    """Where ``text`` (the content of ``path``) fails to parse: (1-based line, message); None if it parses."""
    language = language_of(path)
    if language is None:
        return None
    if language == "python":
        return _python_error(path, text)
    return _tree_sitter_error(language, text)


def check_syntax(path: str, before: str | None, after: str) -> None:
    """Raise :class:`SyntaxBreakError` if ``after`` does not parse while ``before`` did (or was a new file)."""
    error = first_error(path, after)
    if error is None:
        return
    if before is not None and first_error(path, before) is not None:
        return  # it was already broken: not this edit's fault, and refusing would block fixing it
    line, message = error
    shown = after.splitlines()[line - 1].strip() if 0 < line <= len(after.splitlines()) else ""
    raise SyntaxBreakError(
        f"{path}: the edit would break the {language_of(path)} syntax at line {line} ({message})"
        + (f": {shown!r}" if shown else "") + "; the file parsed before the edit. Fix the new code")


def _python_error(path: str, text: str) -> tuple[int, str] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not an error
            ast.parse(text, filename=path)
    except SyntaxError as e:
        return (e.lineno or 1), (e.msg or "invalid syntax")
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return 1, str(e)
    return None


def _tree_sitter_error(language: str, text: str) -> tuple[int, str] | None:
    try:
        parse = parser(language).parse
    except Exception:  # grammar missing from this build of the pack: no check rather than a refusal
        return None
    root = parse(text.encode("utf-8")).root_node
    if not root.has_error:
        return None
    # depth-first, in source order: the first ERROR or MISSING node is where a reader should look
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_missing:
            return node.start_point[0] + 1, f"missing {node.type!r}"
        if node.type == "ERROR":
            return node.start_point[0] + 1, "unexpected text"
        if node.has_error:
            stack.extend(reversed(node.children))
    return root.start_point[0] + 1, "syntax error"
