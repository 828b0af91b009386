"""``build_context``: choose what the model sees, in priority order, under a token budget.

Parts claim the budget in the order of :data:`~corolla.assistant.context.types.PRIORITY`. A part
that does not fit whole is cut (a window around the selection or cursor for the current file, the
head for other files, whole lines or file blocks for the map and tree, always with a marker line)
or, when not even a useful piece fits, dropped and named in ``Context.dropped``. So that one big
current file does not starve everything after it, the current file, each open file and the repo
map first take at most a share of what is left; budget still unused at the end then goes back to
the parts that were cut, in priority order. Each part is charged its own tokens plus one separator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corolla.assistant.context.budget import Counter, approx_tokens, fit_window, with_markers
from corolla.assistant.context.enclosing import scope_note
from corolla.assistant.context.files import list_files
from corolla.assistant.context.instructions import find_instructions
from corolla.assistant.context.ranking import Signals, identifiers, import_fragments, imported_files
from corolla.assistant.context.references import parse_references
from corolla.assistant.context.repomap import file_tree, rank_files, repo_map
from corolla.assistant.context.types import SEPARATOR, Context, ContextPart, EditorState, Reference
from corolla.assistant.fences import code_block
from corolla.assistant.workspace import normalize, show_text

CURRENT_FILE_SHARE = 0.6  # of the budget left when its turn comes, if anything follows it
OPEN_FILE_SHARE = 0.5
REPO_MAP_SHARE = 0.7
MIN_PART_TOKENS = 8  # below this a part is not worth its header
MAX_IDENT_SOURCE_CHARS = 200_000  # identifiers of the current file are collected from this much text


@dataclass
class _Slot:
    label: str
    make: Callable[[int], ContextPart | None]  # the best part within that many tokens, or None
    share: float = 1.0


@dataclass
class _Request:
    """The editor state, normalised once: safe relative paths, texts read once."""

    root: Path
    count: Counter
    query: str
    refs: list[Reference]
    buffers: dict[str, str]
    current: str | None
    current_text: str | None
    current_note: str
    selection: tuple[int, int] | None
    center: int | None  # 0-based line to keep the current file's window around
    open_files: list[str]
    full_files: set[str] = field(default_factory=set)  # files shown whole: the map skips them
    whole_refs: set[str] = field(default_factory=set)  # files referenced whole: not repeated as open files
    _files: list[str] | None = None

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._files = list_files(self.root)
        return self._files


def _request(state: EditorState, query: str, count: Counter) -> _Request:
    root = Path(state.root)
    buffers = {}
    for path, text in sorted(state.buffers.items()):
        rel, _ = normalize(root, path)
        if rel is not None:
            buffers[rel] = text
    current, note = normalize(root, state.current_file) if state.current_file else (None, "")
    text = None
    if current is not None:
        text, note = show_text(root, current, buffers)
    selection = center = None
    if text is not None:
        n = max(len(text.splitlines()), 1)
        if state.selection is not None:
            a, b = sorted(state.selection)
            selection = (min(max(a, 1), n), min(max(b, 1), n))
            center = (selection[0] + selection[1]) // 2 - 1
        elif state.cursor_line is not None:
            center = min(max(state.cursor_line, 1), n) - 1
    opened = []
    for path in state.open_files:
        rel, _ = normalize(root, path)
        if rel is not None and rel != current and rel not in opened:
            opened.append(rel)
    cleaned, refs = parse_references(query)
    return _Request(root, count, cleaned, refs, buffers, current, text, note, selection, center, opened)


def _part(kind: str, label: str, text: str, count: Counter, truncated: bool = False) -> ContextPart:
    return ContextPart(kind, label, text, count(text), truncated)


def _lines_part(kind: str, label: str, path: str, lines: list[str], first_line: int, header: str,
                allowance: int, count: Counter, center: int | None = None, note: str = "") -> ContextPart | None:
    """The whole block when it fits, else the largest window of it (with markers), else None.
    ``note``: a line between the header and the block (what the lines are inside of)."""
    if allowance < MIN_PART_TOKENS:
        return None
    lead = f"\n{note}" if note else ""
    whole = code_block(header + lead, "\n".join(lines), path)
    tokens = count(whole)
    if tokens <= allowance:
        return ContextPart(kind, label, whole, tokens)
    last = first_line + len(lines) - 1

    def render(a: int, b: int) -> str:
        whole = str(last) if first_line == 1 else f"{first_line}-{last}"
        shown = f"{header} (lines {first_line + a}-{first_line + b - 1} of {whole}){lead}"
        return code_block(shown, with_markers(lines, a, b, first_line), path)

    fitted = fit_window(lines, render, allowance, count, center)
    return _part(kind, label, fitted[0], count, truncated=True) if fitted else None


def _text_part(kind: str, label: str, text: str, allowance: int, count: Counter) -> ContextPart | None:
    """Plain text (instructions, notes, diagnostics): whole, or its head with a marker."""
    if allowance < MIN_PART_TOKENS:
        return None
    tokens = count(text)
    if tokens <= allowance:
        return ContextPart(kind, label, text, tokens)
    lines = text.splitlines()
    fitted = fit_window(lines, lambda a, b: with_markers(lines, a, b), allowance, count)
    return _part(kind, label, fitted[0], count, truncated=True) if fitted else None


# ---- the slots, in priority order -------------------------------------------------------------
def _instruction_slots(req: _Request) -> list[_Slot]:
    found = find_instructions(req.root, req.current, req.open_files, req.buffers)
    return [_Slot(i.path, lambda n, i=i: _text_part("instructions", i.path, f"# Instructions from {i.path}\n\n{i.body}",
                                                    n, req.count)) for i in found]


def _selection_slots(req: _Request) -> list[_Slot]:
    slots = []
    if req.selection is not None and req.current_text is not None:
        a, b = req.selection
        lines = req.current_text.splitlines()[a - 1:b]
        label = f"{req.current}:{a}-{b}"
        note = scope_note(req.current_text, req.current, a, b)  # the def line of a selected body, and so on
        slots.append(_Slot(label, lambda n: _lines_part("selection", label, req.current, lines, a,
                                                        f"### Selection: {label}", n, req.count, note=note)))
    elif any(r.kind == "selection" for r in req.refs):
        slots.append(_note_slot("#selection", "#selection was written but nothing is selected", req.count))
    return slots


def _note_slot(label: str, why: str, count: Counter) -> _Slot:
    return _Slot(label, lambda n: _text_part("reference", label, f"Note: {why}.", n, count))


def _reference_slots(req: _Request) -> list[_Slot]:
    slots, seen = [], set()
    for ref in req.refs:
        if ref.kind != "file" or ref.label in seen:
            continue
        seen.add(ref.label)
        rel, why = normalize(req.root, ref.path or "")
        text = None
        if rel is not None:
            text, why = show_text(req.root, rel, req.buffers)
        if text is None:
            slots.append(_note_slot(ref.raw, f"{ref.raw} was not included: {why}", req.count))
            continue
        lines = text.splitlines()
        first, last = 1, len(lines)
        if ref.start_line is not None:
            first, last = max(ref.start_line, 1), min(ref.end_line or ref.start_line, len(lines))
            if first > last:
                slots.append(_note_slot(ref.raw, f"{ref.raw} was not included: {rel} has {len(lines)} lines",
                                        req.count))
                continue
        label = rel if ref.start_line is None else f"{rel}:{first}-{last}"
        whole = (first, last) == (1, len(lines))
        if whole:
            req.whole_refs.add(rel)
        chosen = lines[first - 1:last]

        def make(n: int, rel=rel, label=label, chosen=chosen, first=first, whole=whole) -> ContextPart | None:
            part = _lines_part("reference", label, rel, chosen, first, f"### {label}", n, req.count)
            if part is not None and whole and not part.truncated:
                req.full_files.add(rel)
            return part

        slots.append(_Slot(label, make))
    return slots


def _diagnostic_slots(state: EditorState, req: _Request) -> list[_Slot]:
    if not state.diagnostics:
        return []
    text = "### Diagnostics\n" + "\n".join(state.diagnostics)
    return [_Slot("diagnostics", lambda n: _text_part("diagnostics", "diagnostics", text, n, req.count))]


def _file_slot(req: _Request, kind: str, rel: str, text: str, share: float, center: int | None) -> _Slot:
    title = "Current file" if kind == "current_file" else "Open file"

    def make(n: int) -> ContextPart | None:
        part = _lines_part(kind, rel, rel, text.splitlines(), 1, f"### {title}: {rel}", n, req.count, center)
        if part is not None and not part.truncated:
            req.full_files.add(rel)
        return part

    return _Slot(rel, make, share)


def _file_slots(req: _Request, tail: bool) -> list[_Slot]:
    slots = []
    shown = req.full_files | req.whole_refs
    if req.current is not None and req.current not in shown:
        if req.current_text is None:
            slots.append(_Slot(req.current, lambda n: _text_part(
                "current_file", req.current, f"Note: the current file {req.current_note}.", n, req.count)))
        else:
            share = CURRENT_FILE_SHARE if (tail or req.open_files) else 1.0
            slots.append(_file_slot(req, "current_file", req.current, req.current_text, share, req.center))
    for rel in (f for f in req.open_files if f not in shown):
        text, _ = show_text(req.root, rel, req.buffers)
        if text is not None:
            slots.append(_file_slot(req, "open_file", rel, text, OPEN_FILE_SHARE if tail else 1.0, None))
    return slots


def _signals(req: _Request) -> Signals:
    text = (req.current_text or "")[:MAX_IDENT_SOURCE_CHARS]
    selected = ""
    if req.selection is not None and req.current_text is not None:
        selected = "\n".join(req.current_text.splitlines()[req.selection[0] - 1:req.selection[1]])
    imported = imported_files(import_fragments(req.current, text), req.files) if req.current else set()
    return Signals(frozenset(identifiers(req.query)), frozenset(identifiers(selected)),
                   frozenset(identifiers(text)), req.current, frozenset(req.open_files),
                   frozenset(imported - {req.current}))


def _map_slot(req: _Request, share: float) -> _Slot:
    ranked: list = []

    def make(n: int) -> ContextPart | None:
        if n < MIN_PART_TOKENS:
            return None
        if not ranked:
            exclude = req.full_files | ({req.current} if req.current else set())
            ranked.append(rank_files(req.root, req.files, _signals(req), req.buffers, exclude))
        fitted = repo_map(ranked[0], n, req.count)
        return _part("repo_map", "repo map", fitted[0], req.count, fitted[1]) if fitted else None

    return _Slot("repo map", make, share)


def _tree_slot(req: _Request) -> _Slot:
    def make(n: int) -> ContextPart | None:
        fitted = file_tree(req.files, n, req.count) if n >= MIN_PART_TOKENS and req.files else None
        return _part("file_tree", "file tree", fitted[0], req.count, fitted[1]) if fitted else None

    return _Slot("file tree", make)


# ---- the allocation ---------------------------------------------------------------------------
def _separator_tokens(count: Counter) -> int:
    """What a separator adds between two parts: alone it may be one token, but between the fence that
    ends a part and the heading that starts the next a BPE tokenizer can split it in two."""
    edge_a, edge_b = "```", "###"
    between = count(edge_a + SEPARATOR + edge_b) - count(edge_a) - count(edge_b)
    return max(count(SEPARATOR), between)


def build_context(state: EditorState, query: str = "", *, budget_tokens: int = 3000,
                  count_tokens: Counter = approx_tokens, include_tree: bool = True,
                  include_repo_map: bool = True) -> Context:
    """The context for ``query`` in ``state``, at most ``budget_tokens`` tokens by ``count_tokens``.

    Deterministic: the same workspace, state and query give the same Context.
    """
    req = _request(state, query, count_tokens)
    sep = _separator_tokens(count_tokens)
    tail = include_repo_map or include_tree
    groups: list[Callable[[], list[_Slot]]] = [  # called in turn: later groups see what earlier ones showed
        lambda: _instruction_slots(req), lambda: _selection_slots(req), lambda: _reference_slots(req),
        lambda: _diagnostic_slots(state, req), lambda: _file_slots(req, tail)]
    if include_repo_map:
        groups.append(lambda: [_map_slot(req, REPO_MAP_SHARE if include_tree else 1.0)])
    if include_tree:
        groups.append(lambda: [_tree_slot(req)])

    remaining = budget_tokens
    made: list[tuple[_Slot, ContextPart]] = []
    dropped: list[str] = []
    for group in groups:
        for slot in group():
            allowance = math.floor(remaining * slot.share) - sep
            part = slot.make(allowance) if allowance > 0 else None
            if part is None or part.tokens + sep > remaining:
                dropped.append(slot.label)
                continue
            made.append((slot, part))
            remaining -= part.tokens + sep
    for i, (slot, part) in enumerate(made):  # give what is left to the parts that were cut
        if part.truncated and remaining > MIN_PART_TOKENS:
            grown = slot.make(part.tokens + remaining)
            if grown is not None and part.tokens < grown.tokens <= part.tokens + remaining:
                made[i] = (slot, grown)
                remaining -= grown.tokens - part.tokens
    return Context([part for _, part in made], budget_tokens, dropped)
