"""Which language a file is written in, by its extension, in one place.

:func:`language_of` names the tree-sitter grammar (of ``tree_sitter_language_pack``) that parses a
file: the syntax guard of the edits checks those files, the symbol index reads the definitions of the
languages it has a table for. :func:`parser` gives that grammar's parser (imported lazily, one per
thread: parsers are not thread-safe). :func:`fence_language` is the tag a file's code gets in a
markdown fence.
"""

from __future__ import annotations

import threading
from pathlib import PurePosixPath

GRAMMARS = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust", ".java": "java",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
}
FENCE_TAGS = {".py": "python", ".pyi": "python", ".js": "javascript", ".jsx": "jsx", ".mjs": "javascript",
              ".cjs": "javascript", ".ts": "typescript", ".tsx": "tsx", ".go": "go", ".rs": "rust",
              ".java": "java", ".c": "c", ".h": "c", ".cpp": "cpp", ".hpp": "cpp", ".cc": "cpp", ".cs": "csharp",
              ".rb": "ruby", ".php": "php", ".kt": "kotlin", ".swift": "swift", ".sh": "bash", ".md": "markdown",
              ".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".html": "html", ".css": "css",
              ".sql": "sql"}

_local = threading.local()


def language_of(path: str) -> str | None:
    """The grammar that parses ``path``, by its extension; None when there is none."""
    dot = path.rfind(".")  # str operations: this runs for every file of the workspace
    return GRAMMARS.get(path[dot:].lower()) if dot > path.rfind("/") + 1 else None


def parser(language: str):  # noqa: ANN201 - a tree_sitter.Parser, imported lazily
    """The tree-sitter parser of ``language`` (this thread's); raises when the grammar is not installed."""
    parsers = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = _local.parsers = {}
    if language not in parsers:
        from tree_sitter_language_pack import get_parser

        parsers[language] = get_parser(language)
    return parsers[language]


def fence_language(path: str) -> str:
    """The markdown fence language of a path ("" when unknown)."""
    return FENCE_TAGS.get(PurePosixPath(path).suffix.lower(), "")
