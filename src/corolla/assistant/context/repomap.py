"""The repository map (signatures of the most relevant files) and the file tree, fitted to a budget.

The map looks like aider's: a path, then the signature lines of its definitions with their line
numbers and original indentation. Only a fixed number of the best candidates by cheap signals is
parsed (``max_parse``), which keeps a cold request on a 10,000-file workspace well under a second;
``deadline_s`` is a safety valve for very slow disks (when it trips, the map holds fewer files).
"""

from __future__ import annotations

import posixpath
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.context.budget import CHARS_PER_TOKEN_MAX, Counter, largest_fit
from corolla.assistant.context.ranking import Signals, cheap_scores, rank_key, symbol_score
from corolla.assistant.context.symbols import Symbol, file_symbols, symbol_language
from corolla.assistant.fences import code_block

MAX_SYMBOLS_PER_FILE = 40
MAX_NAMES_PER_FOLDER = 40


@dataclass(frozen=True)
class RankedFile:
    path: str
    score: float
    symbols: tuple[Symbol, ...]


def rank_files(root: Path, files: list[str], signals: Signals, buffers: Mapping[str, str],
               exclude: Collection[str] = (), max_parse: int = 200, deadline_s: float = 0.6) -> list[RankedFile]:
    """Source files with definitions, most relevant first (see :mod:`ranking`)."""
    sources = [f for f in files if f not in exclude and symbol_language(f) is not None]
    cheap = cheap_scores(sources, signals)
    candidates = sorted(sources, key=lambda f: rank_key(f, cheap.get(f, 0.0)))[:max_parse]
    deadline = time.perf_counter() + deadline_s
    ranked = []
    for f in candidates:
        if time.perf_counter() > deadline:
            break
        symbols = file_symbols(root, f, buffers.get(f))
        if symbols:
            ranked.append(RankedFile(f, cheap.get(f, 0.0) + symbol_score(symbols, signals), symbols))
    ranked.sort(key=lambda r: rank_key(r.path, r.score))
    return ranked


def file_block(ranked: RankedFile) -> str:
    """``path:`` and its signature lines (``  12│    def f(self):``), each source line once."""
    out = [f"{ranked.path}:"]
    seen: set[int] = set()
    for s in ranked.symbols:
        if s.line in seen:
            continue
        if len(seen) == MAX_SYMBOLS_PER_FILE:
            out.append(f"{'':>6}⋮ ({len({x.line for x in ranked.symbols}) - len(seen)} more)")
            break
        seen.add(s.line)
        out.append(f"{s.line:>6}│{s.signature}")
    return "\n".join(out)


def _fit_blocks(blocks: list[str], render: Callable[[list[str]], str], budget: int,
                count: Counter) -> tuple[str, int] | None:
    """The longest prefix of ``blocks`` whose rendering fits: ``(text, how many)``, or None."""
    limit, chars = 0, 0
    for b in blocks:  # a real tokenizer is slow on huge texts: never count more than can fit
        chars += len(b) + 1
        if chars > budget * CHARS_PER_TOKEN_MAX:
            break
        limit += 1
    k = largest_fit(limit, lambda k: count(render(blocks[:k])) <= budget)
    return (render(blocks[:k]), k) if k else None


def repo_map(ranked: list[RankedFile], budget: int, count: Counter) -> tuple[str, bool] | None:
    """The map of as many ranked files as fit: ``(text, truncated)``, or None when none fits."""
    blocks = [file_block(r) for r in ranked]

    def render(chosen: list[str]) -> str:
        return code_block("### Repository map (definitions in the most relevant files)", "\n".join(chosen))

    fitted = _fit_blocks(blocks, render, budget, count)
    return (fitted[0], fitted[1] < len(blocks)) if fitted else None


def tree_lines(files: list[str]) -> list[str]:
    """One line per folder, shallow folders first: ``src/app/: a.py b.py sub/``."""
    names: dict[str, list[str]] = defaultdict(list)
    known: set[str] = set()
    for f in files:
        folder, name = posixpath.split(f)
        names[folder].append(name)
        while folder and folder not in known:  # every ancestor lists its sub-folder once
            known.add(folder)
            parent, sub = posixpath.split(folder)
            names[parent].append(sub + "/")
            folder = parent
    lines = []
    for folder in sorted(names, key=lambda d: (d.count("/") if d else -1, d)):
        entries = sorted(names[folder])
        shown = " ".join(entries[:MAX_NAMES_PER_FOLDER])
        more = f" … (+{len(entries) - MAX_NAMES_PER_FOLDER})" if len(entries) > MAX_NAMES_PER_FOLDER else ""
        lines.append(f"{folder + '/' if folder else './'}: {shown}{more}")
    return lines


def file_tree(files: list[str], budget: int, count: Counter) -> tuple[str, bool] | None:
    """The workspace's folders and files (shallow first) as far as the budget goes."""
    lines = tree_lines(files)

    def render(chosen: list[str]) -> str:
        return code_block(f"### Workspace files ({len(files)} files, .gitignore honoured)", "\n".join(chosen))

    fitted = _fit_blocks(lines, render, budget, count)
    return (fitted[0], fitted[1] < len(lines)) if fitted else None
