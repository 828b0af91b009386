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


DIFF = ("diff", "--no-ext-diff", "--no-color", "--src-prefix=a/", "--dst-prefix=b/")  # whatever the user's config


def diff(root: Path, scope: str = "auto", base: str | None = None) -> tuple[str, str]:
    """(what was diffed, the diff) for ``scope``: staged, unstaged, all (both against HEAD), branch
    (``base...HEAD``), or auto (staged when something is staged, else unstaged)."""
    what, text, _ = changes(root, scope, base)
    return what, text


def changes(root: Path, scope: str = "auto", base: str | None = None) -> tuple[str, str, str]:
    """:func:`diff`, and the scope it resolved to (auto becomes staged or unstaged): the side whose
    files :func:`new_text` reads."""
    if not is_repo(root):
        raise GitError(f"{root} is not inside a git repository")
    if scope == "branch":
        base = base or default_branch(root)
        return f"changes of this branch since {base}", git(root, *DIFF, f"{base}...HEAD"), "branch"
    if scope == "auto":
        staged = git(root, *DIFF, "--cached")
        if staged.strip():
            return "staged changes", staged, "staged"
        scope = "unstaged"
    if scope == "staged":
        return "staged changes", git(root, *DIFF, "--cached"), "staged"
    if scope == "unstaged":
        return "unstaged changes", git(root, *DIFF), "unstaged"
    if scope == "all":
        return "all uncommitted changes", git(root, *DIFF, "HEAD"), "all"
    raise GitError(f"unknown diff scope {scope!r}: use staged, unstaged, all, branch or auto")


def new_text(root: Path, scope: str, path: str) -> str | None:
    """The text of ``path`` after the changes of ``scope`` (as :func:`changes` resolved it): the work
    tree's file, the index's (staged) or HEAD's (branch); None when it is not there or not text."""
    if scope in ("unstaged", "all"):
        file = Path(root) / path
        try:
            data = file.read_bytes() if file.is_file() and file.resolve().is_relative_to(Path(root).resolve()) else None
        except OSError:
            return None
    else:
        try:
            done = subprocess.run(["git", "-C", str(root), "show", f"{':' if scope == 'staged' else 'HEAD:'}{path}"],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        data = done.stdout if done.returncode == 0 else None
    if data is None or b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", "replace")


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
