"""The workspace's files: which exist (honouring .gitignore). Which paths are safe and what a file
contains: :mod:`corolla.assistant.workspace`.

In a git work tree the list comes from ``git ls-files`` (git already knows every ignore rule, and is
fast); elsewhere a walk applies each directory's ``.gitignore`` with pathspec's gitwildmatch, deeper
files overriding shallower ones as git does. ``.git/`` and ``.corolla/`` are never listed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pathspec

SKIP_DIRS = frozenset({".git", ".corolla"})


def list_files(root: Path) -> list[str]:
    """Every non-ignored file under ``root``, workspace-relative POSIX paths, sorted."""
    files = _git_files(root)
    if files is None:
        files = walk_files(root)
    return sorted({f for f in files if not (SKIP_DIRS & {d.lower() for d in f.split("/")[:-1]})})


def _inside_git_work_tree(root: Path) -> bool:
    """A ``.git`` in ``root`` or above (cheaper than asking git, which costs a process)."""
    for folder in (root, *root.parents):
        if (folder / ".git").exists():
            return True
    return False


def _git_files(root: Path) -> list[str] | None:
    if not _inside_git_work_tree(root):
        return None
    cmd = ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    names = out.stdout.decode("utf-8", "surrogateescape").split("\0")
    # --cached still lists files deleted from the work tree, and submodules (folders): keep real files
    return [n for n in names if n and os.path.isfile(os.path.join(root, n))]


def _ignored(rel: str, specs: list[tuple[str, pathspec.PathSpec]]) -> bool:
    """Whether the .gitignore files on the way to ``rel`` ignore it (the deepest match decides)."""
    result = False
    for prefix, spec in specs:
        check = spec.check_file(rel[len(prefix) + 1:] if prefix else rel)
        if check.include is not None:
            result = check.include
    return result


def _read_gitignore(path: str) -> pathspec.PathSpec | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())
    except OSError:
        return None


def walk_files(root: Path) -> list[str]:
    """The files under ``root`` that its .gitignore files (nested ones too) do not ignore."""
    out: list[str] = []
    stack: list[tuple[str, list[tuple[str, pathspec.PathSpec]]]] = [("", [])]
    while stack:
        rel_dir, specs = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        if any(e.name == ".gitignore" and e.is_file() for e in entries):
            spec = _read_gitignore(os.path.join(root, rel_dir, ".gitignore"))
            if spec is not None:
                specs = [*specs, (rel_dir, spec)]
        subdirs = []
        for e in entries:
            if e.is_symlink():
                continue  # may lead outside the workspace, or in circles
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            if e.is_dir():
                if e.name.lower() not in SKIP_DIRS and not _ignored(rel + "/", specs):
                    subdirs.append((rel, specs))
            elif e.is_file() and not _ignored(rel, specs):
                out.append(rel)
        stack.extend(reversed(subdirs))
    return out
