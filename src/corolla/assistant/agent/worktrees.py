"""Git worktrees for background agents: each agent edits its own checkout on its own branch, so the
user's working tree is never touched until they ``apply`` the agent's diff (or ``discard`` it).

A worktree lives at ``<workspace>/.corolla/worktrees/<id>`` (``.corolla/`` ignores itself) on the
branch ``corolla/agent-<id>``, made from ``HEAD``. All of it goes through ``git`` in a subprocess;
every failure is a :class:`GitError` whose message says what to do.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.errors import ApplyConflictError, GitError
from corolla.assistant.git import git

WORKTREES_DIR = Path(".corolla") / "worktrees"
BRANCH_PREFIX = "corolla/agent-"
# Used only when the repository has no identity of its own (a fresh CI box), so a commit never fails on it.
FALLBACK_IDENTITY = ("corolla agent", "agent@corolla.invalid")


@dataclass(frozen=True)
class Worktree:
    path: Path  # the worktree's top level
    workdir: Path  # where the agent works: the workspace's place inside the worktree
    branch: str
    base: str  # the commit the branch started from

    def to_json(self) -> dict:
        return {"worktree": str(self.path), "workdir": str(self.workdir), "branch": self.branch, "base": self.base}


def toplevel(root: Path) -> Path:
    """The top of the git work tree holding ``root``; a clear error when there is none."""
    try:
        return Path(git(root, "rev-parse", "--show-toplevel").strip()).resolve()
    except GitError:
        raise GitError(f"{root} is not inside a git repository; agents work on a branch of one "
                       "(run `git init` and commit first)") from None


def head_commit(root: Path) -> str:
    try:
        return git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").strip()
    except GitError:
        raise GitError(f"the repository at {root} has no commits yet; commit once before starting an agent "
                       "(it works on a branch made from HEAD)") from None


def create(root: Path, agent_id: str) -> Worktree:
    """A new worktree for agent ``agent_id`` on a new branch from ``HEAD``."""
    root = Path(root).resolve()
    top = toplevel(root)
    base = head_commit(top)
    prefix = root.relative_to(top) if root != top else Path()
    path = root / WORKTREES_DIR / agent_id
    branch = BRANCH_PREFIX + agent_id
    if path.exists():
        raise GitError(f"{path} already exists; discard the agent that used it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = root / ".corolla" / ".gitignore"  # as the session store does: never commit the worktrees
    if not ignore.exists():
        ignore.write_text("*\n")
    git(top, "worktree", "add", "--quiet", "-b", branch, str(path), base)
    return Worktree(path, path / prefix, branch, base)


def _identity(path: Path) -> list[str]:
    args = []
    for key, value in zip(("user.name", "user.email"), FALLBACK_IDENTITY):
        try:
            git(path, "config", key)
        except GitError:
            args += ["-c", f"{key}={value}"]
    return args


def commit_all(path: Path, message: str) -> str | None:
    """Commit every change in the worktree at ``path`` (new files too); the new commit, or None when
    nothing changed. Hooks are skipped: the agent's branch is a draft for the user to review."""
    git(path, "add", "-A")
    if not git(path, "status", "--porcelain").strip():
        return None
    git(path, *_identity(path), "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify",
        "-m", message)
    return git(path, "rev-parse", "HEAD").strip()


def branch_diff(root: Path, base: str, branch: str) -> str:
    """What the branch changed since ``base`` (``git diff base...branch``, binary-safe)."""
    return git(toplevel(root), "diff", "--binary", f"{base}...{branch}")


def worktree_diff(path: Path, base: str) -> str:
    """The worktree's changes against ``base`` so far, committed or not (a running agent's progress;
    files it created but git does not know yet are not shown)."""
    return git(path, "diff", "--binary", base)


def changed_files(diff_text: str) -> list[str]:
    files = []
    for line in diff_text.splitlines():
        if line.startswith("diff --git "):
            name = line.rsplit(" b/", 1)[-1]
            if name not in files:
                files.append(name)
    return files


def apply_to(root: Path, diff_text: str) -> list[str]:
    """Apply ``diff_text`` to the user's working tree, all of it or none: ``git apply --check`` runs
    first, and a patch that does not apply cleanly (the user changed the same lines, or created a
    file the agent also created) is refused with :class:`ApplyConflictError`, the tree untouched."""
    files = changed_files(diff_text)
    if not diff_text.strip():
        return []
    top = toplevel(root)
    check = _apply(top, diff_text, "--check")
    if check.returncode != 0:
        problems = "; ".join(line.removeprefix("error: ") for line in check.stderr.splitlines() if line.strip())
        raise ApplyConflictError(
            f"the agent's changes conflict with your working tree ({problems or 'patch does not apply'}); "
            f"nothing was changed. Commit or stash your changes to {', '.join(files)} and apply again, "
            f"or review the branch yourself")
    done = _apply(top, diff_text)
    if done.returncode != 0:  # --check passed, so this is a race with another writer; git apply is atomic
        raise ApplyConflictError(f"`git apply` failed after its check passed: {done.stderr.strip()}")
    return files


def _apply(top: Path, diff_text: str, *flags: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(top), "apply", "--binary", "--whitespace=nowarn", *flags],
                              input=diff_text, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError("`git apply` took longer than 60 s") from None


def remove(root: Path, path: Path, branch: str) -> None:
    """Remove the worktree and delete its branch; parts already gone are skipped."""
    top = toplevel(root)
    if Path(path).exists():
        git(top, "worktree", "remove", "--force", str(path))
    git(top, "worktree", "prune")
    try:
        git(top, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
    except GitError:
        return
    git(top, "branch", "-D", branch)


def branch_exists(root: Path, branch: str) -> bool:
    try:
        git(toplevel(root), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
        return True
    except GitError:
        return False


__all__ = ["BRANCH_PREFIX", "WORKTREES_DIR", "Worktree", "apply_to", "branch_diff", "branch_exists",
           "changed_files", "commit_all", "create", "head_commit", "remove", "toplevel", "worktree_diff"]
