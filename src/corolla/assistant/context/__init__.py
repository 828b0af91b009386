"""The assistant's context engine: what the model sees besides the question, under a token budget.

:func:`build_context` gathers, in this priority order (a part never loses budget to one below it):

1. custom instructions (``.github/copilot-instructions.md``, ``.github/instructions/*.instructions.md``
   whose ``applyTo`` globs match the current or an open file, ``AGENTS.md`` at the root and nearest
   the current file);
2. the selection, with the headers of the definitions it is inside of (the ``def`` line of a
   selected body: :mod:`~corolla.assistant.context.enclosing`);
3. ``#file:path`` / ``#file:path:A-B`` references from the query (a note when a path is missing or
   outside the workspace);
4. diagnostics;
5. the current file (a window around the selection or cursor when it is too big);
6. the open files;
7. a repository map: signature lines of the most relevant files, ranked by identifiers of the
   query, the selection and the current file, its imports and its folder (tree-sitter);
8. the file tree (``.gitignore`` honoured).

Parts that do not fit are cut with a marker line or dropped and listed in ``Context.dropped``.
Tokens are counted with the injected ``count_tokens`` (default :func:`approx_tokens`). The same
inputs give the same :class:`Context`.
"""

from __future__ import annotations

from corolla.assistant.context.budget import approx_tokens
from corolla.assistant.context.builder import build_context
from corolla.assistant.context.files import list_files
from corolla.assistant.context.instructions import find_instructions
from corolla.assistant.context.references import parse_references
from corolla.assistant.context.symbols import Symbol, clear_cache, extract_symbols
from corolla.assistant.context.types import PRIORITY, Context, ContextPart, EditorState, Reference

__all__ = [
    "PRIORITY",
    "Context",
    "ContextPart",
    "EditorState",
    "Reference",
    "Symbol",
    "approx_tokens",
    "build_context",
    "clear_cache",
    "extract_symbols",
    "find_instructions",
    "list_files",
    "parse_references",
]
