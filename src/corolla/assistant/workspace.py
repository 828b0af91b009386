"""The workspace's files by path, in one place: which paths are safe, and a file's current text.

A safe path is relative, stays inside the workspace root (also through symlinks) and is never under
``.git/`` in any letter case (a model must not read or rewrite the repository's history or hooks).
:func:`safe_relpath` and :func:`resolve` raise :class:`UnsafePathError`; :func:`normalize` is their soft
form for a path a model or a person typed, which also takes an absolute path inside the workspace.

:func:`read_text` is the one reader: an editor's unsaved buffer first, else the disk. Text to edit must
be UTF-8; text only shown (``show=True``, or :func:`show_text`) must not be binary or huge, and bytes that
are not UTF-8 are replaced. The context (what the model is shown) and the edits (what is changed) both
read through here, so a path one refuses the other refuses too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path

from corolla.assistant.errors import AssistantError, EditError, UnsafePathError

MAX_SHOWN_BYTES = 1_000_000  # larger files are not shown as content
BINARY_SNIFF_BYTES = 8192  # a NUL byte in the first this many bytes: a binary file


def in_git_dir(parts: Iterable[str]) -> bool:
    """Whether a path of these parts is in a ``.git`` folder (any letter case: case-insensitive file systems)."""
    return any(part.lower() == ".git" for part in parts)


def safe_relpath(path: str) -> str:
    """Normalise a workspace path from a model ("./src\\a.py" -> "src/a.py") or refuse it.

    Refused: empty paths and the root itself, absolute paths (POSIX, drive letters, UNC), paths whose
    ``..`` leave the root, and anything under ``.git/``.
    """
    raw = path.strip()
    p = raw.replace("\\", "/")
    if not p or p in (".", "./"):
        raise UnsafePathError(f"empty file path {raw!r}")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":") or "\0" in p:
        raise UnsafePathError(f"{raw}: absolute paths are refused; use a path relative to the workspace")
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        raise UnsafePathError(f"{raw}: the path leads outside the workspace")
    if norm == ".":
        raise UnsafePathError(f"{raw}: the workspace root is not a file of the workspace")
    if in_git_dir(norm.split("/")):
        raise UnsafePathError(f"{raw}: a file under .git/ is not a file of the workspace (never read or edited)")
    return norm


def resolve(root: Path, path: str) -> Path:
    """The file for workspace path ``path``, refusing symlinks that lead outside ``root`` or into .git/."""
    rel = safe_relpath(path)
    try:
        base = Path(root).resolve()
        full = (base / rel).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise UnsafePathError(f"{path}: the path cannot be resolved ({e})") from None
    if full != base and base not in full.parents:
        raise UnsafePathError(f"{path}: the path leads outside the workspace (through a symlink)")
    if full == base:
        raise UnsafePathError(f"{path}: not a file")
    if in_git_dir(full.relative_to(base).parts):
        raise UnsafePathError(f"{path}: the path leads into .git/ (through a symlink)")
    return full  # a symlink inside the workspace is followed, so the link itself survives the write


def normalize(root: Path, path: str, *, allow_root: bool = False) -> tuple[str | None, str]:
    """``path`` as a workspace-relative POSIX path, or ``(None, why)`` when :func:`resolve` refuses it.

    An absolute path inside the workspace is taken as the relative one; with ``allow_root`` the
    workspace root itself (".", "src/..", its absolute path) is ``""`` instead of a refusal.
    """
    raw = path.strip().replace("\\", "/")
    if not raw:
        return None, "empty path"
    if posixpath.isabs(raw):
        try:
            raw = Path(raw).resolve().relative_to(Path(root).resolve()).as_posix()
        except (ValueError, OSError, RuntimeError):
            return None, f"{path}: the path leads outside the workspace"
    if allow_root and posixpath.normpath(raw) == ".":
        return "", ""
    try:
        rel = safe_relpath(raw)
        resolve(root, rel)
    except UnsafePathError as e:
        return None, str(e)
    return rel, ""


def read_text(root: Path, path: str, buffers: Mapping[str, str] | None = None, *, show: bool = False) -> str | None:
    """The current text of workspace file ``path``: its editor buffer if open, else the disk; None if missing.

    Raises :class:`UnsafePathError` for a path :func:`resolve` refuses and :class:`EditError` for a
    folder or a file that cannot be read as text: to be edited, a file must be UTF-8; to be shown
    (``show``), it must not be binary or larger than :data:`MAX_SHOWN_BYTES`, and bytes that are not
    UTF-8 are replaced.
    """
    rel = safe_relpath(path)
    if buffers:
        for key in (path, rel):
            if key in buffers:
                return buffers[key]
    file = resolve(root, rel)
    try:
        if show and file.is_file() and (size := file.stat().st_size) > MAX_SHOWN_BYTES:
            raise EditError(f"{rel} is too large to show ({size} bytes)")
        data = file.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise EditError(f"{rel} is a directory, not a file") from None
    except OSError as e:
        raise EditError(f"{rel} cannot be read ({e.strerror or e})") from None
    if show:
        if b"\0" in data[:BINARY_SNIFF_BYTES]:
            raise EditError(f"{rel} is a binary file")
        return data.decode("utf-8", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EditError(f"{rel} is not a UTF-8 text file; it is not edited") from None


def show_text(root: Path, path: str, buffers: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """:func:`read_text` of a file to show: ``(text, "")``, or ``(None, why)`` when it cannot be shown."""
    try:
        text = read_text(root, path, buffers, show=True)
    except AssistantError as e:
        return None, str(e)
    return (text, "") if text is not None else (None, f"{path} does not exist")


def peek_text(root: Path, path: str) -> str:
    """A project file's text for a quick look (pyproject.toml, package.json, a test file): "" when it is
    missing or cannot be shown."""
    return show_text(root, path)[0] or ""
