"""Custom instructions, found where GitHub Copilot and other agents look for them.

- ``.github/copilot-instructions.md``: always;
- ``AGENTS.md`` at the root, and the nearest ``AGENTS.md`` above the current file (the closer one
  is more specific, so it comes last);
- ``.github/instructions/*.instructions.md``: when their front matter's ``applyTo`` (comma-separated
  globs, VS Code syntax) matches the current file or an open file; without ``applyTo``, or with
  ``**``, always.

Globs follow VS Code: ``*`` and ``?`` stay inside one path segment, ``**`` spans segments, ``{a,b}``
alternates, ``[...]`` is a class. As in VS Code a pattern that does not start with ``/`` or ``**/``
may match at any depth (``*.py`` matches ``src/a.py``); a leading ``/`` anchors it at the root.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.workspace import show_text

COPILOT = ".github/copilot-instructions.md"
AGENTS = "AGENTS.md"
INSTRUCTIONS_DIR = ".github/instructions"
SUFFIX = ".instructions.md"


@dataclass(frozen=True)
class Instruction:
    path: str  # where it came from (the part's label)
    body: str


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """``(fields, body)`` of a markdown file with optional ``---`` front matter (flat ``key: value``)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, text
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            break
    else:
        return {}, text
    fields = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.startswith((" ", "\t", "#")):
            fields[key.strip()] = value.strip()
    return fields, "\n".join(lines[end + 1:]).strip("\n")


def split_globs(value: str) -> list[str]:
    """``applyTo``'s globs: a quoted or bare comma-separated string, or a YAML flow list.

    Commas inside ``{...}`` belong to the glob (``**/*.{ts,tsx}``).
    """
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    globs, depth, cur = [], 0, []
    for ch in value:
        if ch == "," and depth == 0:
            globs.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}" and depth > 0
        cur.append(ch)
    globs.append("".join(cur))
    return [g for g in (g.strip().strip("'\"").strip() for g in globs) if g]


@functools.lru_cache(maxsize=512)
def glob_regex(glob: str) -> re.Pattern[str]:
    """A VS Code glob as a regex over workspace-relative POSIX paths (see the module docstring)."""
    if glob.startswith("/"):
        glob = glob.lstrip("/")
    elif not glob.startswith("**"):
        glob = "**/" + glob
    out, i, n = [], 0, len(glob)
    while i < n:
        ch = glob[i]
        if glob.startswith("**", i):
            i += 2
            if glob.startswith("/", i):  # "**/": zero or more whole segments
                out.append("(?:[^/]*/)*")
                i += 1
            else:
                out.append(".*")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "{":
            close = glob.find("}", i)
            if close < 0:
                out.append(re.escape(ch))
            else:
                alts = glob[i + 1:close].split(",")
                out.append("(?:" + "|".join(glob_regex_body(a) for a in alts) + ")")
                i = close
        elif ch == "[":
            close = glob.find("]", i + 1)
            if close < 0:
                out.append(re.escape(ch))
            else:
                inner = glob[i + 1:close]
                if inner.startswith("!"):
                    inner = "^" + inner[1:]
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                i = close
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob_regex_body(glob: str) -> str:
    """The regex of a ``{...}`` alternative (no anchoring, no ``**/`` prefix)."""
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in glob)


def applies(apply_to: str | None, paths: Iterable[str]) -> bool:
    """Whether instructions with this ``applyTo`` apply when ``paths`` are in the editor."""
    globs = split_globs(apply_to) if apply_to is not None else []
    if not globs or any(g in ("**", "**/*", "*") for g in globs):
        return True
    return any(glob_regex(g).match(p) for g in globs for p in paths)


def nearest_agents(root: Path, current_file: str | None, buffers: Mapping[str, str]) -> str | None:
    """The ``AGENTS.md`` closest above ``current_file``, below the root (None: only the root's)."""
    if not current_file:
        return None
    folder = posixpath.dirname(current_file)
    while folder:
        candidate = f"{folder}/{AGENTS}"
        if candidate in buffers or (root / candidate).is_file():
            return candidate
        folder = posixpath.dirname(folder)
    return None


def find_instructions(root: Path, current_file: str | None, open_files: Iterable[str] = (),
                      buffers: Mapping[str, str] | None = None) -> list[Instruction]:
    """The instructions that apply, general first, most specific last."""
    buffers = buffers or {}
    active = [p for p in (current_file, *open_files) if p]
    found: list[Instruction] = []

    def add(rel: str, body: str | None = None) -> None:
        if body is None:
            text, _ = show_text(root, rel, buffers)
            if text is None:
                return
            body = text.strip("\n")
        if body.strip():
            found.append(Instruction(rel, body))

    add(COPILOT)
    folder = root / INSTRUCTIONS_DIR
    names = sorted(p.name for p in folder.glob("*" + SUFFIX)) if folder.is_dir() else []
    for name in names:
        rel = f"{INSTRUCTIONS_DIR}/{name}"
        text, _ = show_text(root, rel, buffers)
        if text is None:
            continue
        fields, body = split_front_matter(text)
        if applies(fields.get("applyTo"), active):
            add(rel, body)
    add(AGENTS)
    nearest = nearest_agents(root, current_file, buffers)
    if nearest is not None:
        add(nearest)
    return found
