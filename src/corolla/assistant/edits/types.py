"""The data of an edit: what the model asked for (:class:`Edit`), what a whole-block reply replaces
(:class:`Target`), and what would change on disk (:class:`FileChange`, :class:`Proposal`).

Edits are plain data parsed from a reply; nothing here touches the filesystem, so a proposal can be
shown, stored as JSON, and applied or undone later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

EditFormat = Literal["whole", "search_replace"]  # how a model writes an edit: see corolla.assistant.edits
FORMATS: tuple[str, ...] = get_args(EditFormat)
DEFAULT_FORMAT: EditFormat = "whole"  # chosen by benchmarks/edits.py on qwen2.5-coder-0.5b (see README)


@dataclass(frozen=True)
class Target:
    """What a whole-block reply replaces: lines ``start_line..end_line`` (inclusive) or the whole file."""

    path: str
    start_line: int | None = None
    end_line: int | None = None

    @property
    def whole_file(self) -> bool:
        return self.start_line is None

    def label(self) -> str:
        if self.start_line is None:
            return self.path
        return f"{self.path}:{self.start_line}-{self.end_line or self.start_line}"


@dataclass(frozen=True)
class Edit:
    """One replacement the model asked for.

    ``old`` is the text expected in the file ("" creates a new file, fills an empty one, or appends);
    ``line`` is where ``old`` is expected to start (1-based), known for whole-block targets: it picks
    the right place when the same text occurs several times. ``target`` is set (and ``old`` left "")
    by the whole format when the reply was parsed without the file's text: ``new`` is then the
    model's code as written, and ``propose`` reads the target block and fits ``new`` to it.
    """

    path: str
    old: str
    new: str
    line: int | None = None
    target: Target | None = None


@dataclass(frozen=True)
class FileChange:
    """The content of one file before (None: it did not exist) and after a proposal."""

    path: str
    before: str | None
    after: str


@dataclass(frozen=True)
class Proposal:
    """Changes to apply together (all or none), their unified diff, and how each edit matched."""

    changes: tuple[FileChange, ...]
    diff: str
    notes: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes)
