"""The git facts the assistant reads: diffs to review, the staged diff and recent commit subjects."""

from __future__ import annotations

import subprocess
from pathlib import Path

from corolla.assistant.errors import GitError

MAX_DIFF_CHARS = 24_000  # a small model's context; the rest is summarised by file name


def git(root: Path, *args: str, timeout_s: float = 30.0) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"`git {' '.join(args)}` took longer than {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` failed in {root}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def is_repo(root: Path) -> bool:
    try:
        return git(root, "rev-parse", "--is-inside-work-tree").strip() == "true"
    except GitError:
        return False


def diff(root: Path, scope: str = "auto", base: str | None = None) -> tuple[str, str]:
    """(what was diffed, the diff) for ``scope``: staged, unstaged, all (both against HEAD), branch
    (``base...HEAD``), or auto (staged when something is staged, else unstaged)."""
    if not is_repo(root):
        raise GitError(f"{root} is not inside a git repository")
    if scope == "branch":
        base = base or default_branch(root)
        return f"changes of this branch since {base}", git(root, "diff", f"{base}...HEAD")
    if scope == "auto":
        staged = git(root, "diff", "--cached")
        if staged.strip():
            return "staged changes", staged
        scope = "unstaged"
    if scope == "staged":
        return "staged changes", git(root, "diff", "--cached")
    if scope == "unstaged":
        return "unstaged changes", git(root, "diff")
    if scope == "all":
        return "all uncommitted changes", git(root, "diff", "HEAD")
    raise GitError(f"unknown diff scope {scope!r}: use staged, unstaged, all, branch or auto")


def default_branch(root: Path) -> str:
    for name in ("main", "master", "trunk"):
        try:
            git(root, "rev-parse", "--verify", "--quiet", name)
            return name
        except GitError:
            continue
    raise GitError("no base branch given and none of main, master, trunk exists")


def recent_subjects(root: Path, n: int = 12) -> list[str]:
    """Subjects of the last ``n`` commits (the style a commit message should follow); [] in a new repo."""
    try:
        return [line for line in git(root, "log", f"-{n}", "--format=%s").splitlines() if line.strip()]
    except GitError:
        return []


def clip_diff(text: str, limit: int = MAX_DIFF_CHARS) -> str:
    """The diff cut at a file boundary to fit ``limit`` characters, naming the files left out."""
    if len(text) <= limit:
        return text
    files = text.split("\ndiff --git ")
    kept, left = [files[0]], []
    size = len(files[0])
    for chunk in files[1:]:
        if size + len(chunk) + 12 <= limit:
            kept.append(chunk)
            size += len(chunk) + 12
        else:
            left.append(chunk.split("\n", 1)[0].split(" b/")[-1])
    out = "\ndiff --git ".join(kept)
    if len(out) > limit:
        out = out[:limit].rsplit("\n", 1)[0] + "\n[... diff cut to fit the context ...]"
    if left:
        out += "\n[not shown, too long: " + ", ".join(left) + "]"
    return out
