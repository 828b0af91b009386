"""The context engine's data: what the editor tells us (:class:`EditorState`) and what we give the model.

Workspace paths are workspace-relative POSIX strings (``"src/app.py"``); line numbers are 1-based
and inclusive. The types are plain dataclasses so that the CLI, the HTTP service and editors can
build and serialise them without knowing how the context was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# the order in which parts claim the token budget (and appear in the prompt)
PRIORITY = ("instructions", "selection", "reference", "diagnostics", "current_file", "open_file",
            "repo_map", "file_tree")


@dataclass(frozen=True)
class EditorState:
    """What the editor knows at the moment of a request."""

    root: Path  # the workspace root
    current_file: str | None = None
    selection: tuple[int, int] | None = None  # (first_line, last_line) in current_file
    cursor_line: int | None = None
    open_files: tuple[str, ...] = ()
    buffers: Mapping[str, str] = field(default_factory=dict)  # unsaved editor text by path; overrides disk
    diagnostics: tuple[str, ...] = ()  # e.g. "src/a.py:12: error: ..." shown for /fix


@dataclass(frozen=True)
class ContextPart:
    """One piece of the prompt, as an editor shows it (a chip) and as the model reads it."""

    kind: str  # one of PRIORITY
    label: str  # what an editor shows as a chip: "src/a.py:10-20", "AGENTS.md", "repo map"
    text: str  # what goes into the prompt (already truncated to fit)
    tokens: int
    truncated: bool = False


@dataclass(frozen=True)
class Reference:
    """A ``#file:path``, ``#file:path:A-B`` or ``#selection`` written in the query."""

    kind: str  # "file" | "selection"
    raw: str  # the text as written, e.g. "#file:src/a.py:3-9"
    path: str | None = None
    start_line: int | None = None
    end_line: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "selection":
            return "selection"
        if self.start_line is None:
            return str(self.path)
        return f"{self.path}:{self.start_line}-{self.end_line}"


@dataclass
class Context:
    """The chosen parts, in priority order, and what the budget left out."""

    parts: list[ContextPart]
    budget_tokens: int
    dropped: list[str] = field(default_factory=list)  # labels left out for the budget

    @property
    def used_tokens(self) -> int:
        return sum(part.tokens for part in self.parts)

    def instructions(self) -> str:
        """The custom instructions, for the system prompt."""
        return SEPARATOR.join(p.text for p in self.parts if p.kind == "instructions")

    def render(self) -> str:
        """Everything but the instructions: markdown sections with path headers and fenced code."""
        return SEPARATOR.join(p.text for p in self.parts if p.kind != "instructions")

    def to_json(self) -> list[dict]:
        """``[{kind, label, tokens, truncated}]``: what sessions store and editors show as chips."""
        return [{"kind": p.kind, "label": p.label, "tokens": p.tokens, "truncated": p.truncated}
                for p in self.parts]


SEPARATOR = "\n\n"  # between parts in render() and instructions(); its tokens are charged to each part
