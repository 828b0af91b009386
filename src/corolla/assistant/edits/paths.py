"""Which paths an edit may touch: relative ones inside the workspace root, never inside .git/."""

from __future__ import annotations

import posixpath
from pathlib import Path

from corolla.assistant.errors import UnsafePathError


def safe_relpath(path: str) -> str:
    """Normalise a workspace path from a model ("./src\\a.py" -> "src/a.py") or refuse it.

    Refused: empty paths, absolute paths (POSIX, drive letters, UNC), paths whose ``..`` leave the
    root, and anything under ``.git/`` (a model must not rewrite the repository's history or hooks).
    """
    raw = path.strip()
    p = raw.replace("\\", "/")
    if not p or p in (".", "./"):
        raise UnsafePathError(f"empty file path {raw!r}")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":") or "\0" in p:
        raise UnsafePathError(f"{raw}: absolute paths are refused; use a path relative to the workspace")
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        raise UnsafePathError(f"{raw}: the path leaves the workspace")
    if any(part.lower() == ".git" for part in norm.split("/")):
        raise UnsafePathError(f"{raw}: files under .git/ are never edited")
    return norm


def resolve(root: Path, path: str) -> Path:
    """The file for workspace path ``path``, refusing symlinks that lead outside ``root``."""
    rel = safe_relpath(path)
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise UnsafePathError(f"{path}: the path leads outside the workspace (through a symlink)")
    if full == base:
        raise UnsafePathError(f"{path}: not a file")
    if ".git" in full.relative_to(base).parts:
        raise UnsafePathError(f"{path}: the path leads into .git/ (through a symlink)")
    return full  # a symlink inside the workspace is followed, so the link itself survives the write
