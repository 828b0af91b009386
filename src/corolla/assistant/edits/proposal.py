"""From edits to a :class:`Proposal` (checked, never written), and its atomic apply and undo.

``propose`` reads each file (an editor's unsaved buffer wins over the disk), applies the file's
edits in order, each against the updated content, and refuses the whole proposal on the first
problem: an unsafe path, text not found or found twice, a lazy placeholder, a syntax error the
edit introduces, or a definition other code uses removed, renamed or re-nested (unless ``allow``
covers it). CRLF files are edited in "\\n" form and written back with CRLF.

``apply`` and ``revert`` write all files or none: every file is first checked to be as expected
(else :class:`StaleFileError`), the new contents go to temporary files beside their targets
(fsynced), and only then are they moved into place one by one; if any step fails, the files
already moved are restored and the temporary files removed.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.edits.matching import DEFAULT_THRESHOLD, replace_once
from corolla.assistant.edits.placeholders import check_placeholders
from corolla.assistant.edits.structure import NOTHING, Allowance, check_structure
from corolla.assistant.edits.syntax import check_syntax
from corolla.assistant.edits.types import Edit, FileChange, Proposal
from corolla.assistant.edits.whole import resolve_whole
from corolla.assistant.errors import EditError, NoMatchError, StaleFileError
from corolla.assistant.workspace import read_text, resolve, safe_relpath

logger = logging.getLogger(__name__)

_NEW_FILE_MODE = 0o644
JSON_VERSION = 1


def propose(root: Path, edits: list[Edit], *, buffers: Mapping[str, str] | None = None,
            threshold: float = DEFAULT_THRESHOLD, allow: Allowance = NOTHING) -> Proposal:
    """Check ``edits`` against the workspace and return what would change (nothing is written).

    ``allow``: the structural changes the request asked for (see :mod:`.structure`); others are refused."""
    by_path: dict[str, list[Edit]] = {}
    for edit in edits:
        by_path.setdefault(safe_relpath(edit.path), []).append(edit)
    changes: list[FileChange] = []
    notes: list[str] = []
    for rel, file_edits in by_path.items():
        resolve(Path(root), rel)  # refuses symlinks out of the workspace before anything is read
        before = read_text(Path(root), rel, buffers)
        after = _edit_file(rel, before, file_edits, notes, threshold)
        if after == before:
            notes.append(f"{rel}: no change")
            continue
        check_syntax(rel, before, after)
        check_structure(rel, before, after, allow)
        changes.append(FileChange(rel, before, after))
    return Proposal(tuple(changes), unified_diff(changes), tuple(notes))


def _edit_file(rel: str, before: str | None, edits: list[Edit], notes: list[str], threshold: float) -> str:
    crlf = before is not None and "\r\n" in before
    content = None if before is None else before.replace("\r\n", "\n")
    for edit in edits:
        if edit.target is not None and not edit.old:
            edit = resolve_whole(edit.new.split("\n"), edit.target, content)
        old, new = _lf(edit.old), _lf(edit.new)
        check_placeholders(rel, old, new)
        if not old:
            if content is None:
                content = new
                notes.append(f"{rel}: new file")
            elif not content.strip():
                content = new
                notes.append(f"{rel}: wrote the empty file")
            else:
                sep = "" if content.endswith("\n") else "\n"
                notes.append(f"{rel}: appended at line {content.count(chr(10)) + len(sep) + 1}")
                content = content + sep + new
            continue
        if content is None:
            raise NoMatchError(f"{rel}: the file does not exist; to create it, leave the text to replace empty")
        replaced = replace_once(content, old, new, path=rel, line=edit.line, threshold=threshold)
        content = replaced.content
        notes.append(replaced.note)
    assert content is not None  # edits is never empty
    return content.replace("\n", "\r\n") if crlf else content


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def unified_diff(changes: list[FileChange] | tuple[FileChange, ...]) -> str:
    """A unified diff of ``changes`` (``a/`` and ``b/`` paths; created files come from /dev/null)."""
    out: list[str] = []
    for change in changes:
        before = change.before or ""
        fromfile = f"a/{change.path}" if change.before is not None else "/dev/null"
        for line in difflib.unified_diff(before.splitlines(keepends=True), change.after.splitlines(keepends=True),
                                         fromfile, f"b/{change.path}"):
            out.append(line)
            if not line.endswith("\n"):
                out.append("\n\\ No newline at end of file\n")
    return "".join(out)


# --- apply and revert ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    path: str
    file: Path
    expected: str | None  # what the file must hold now (None: it must not exist)
    content: str | None  # what it will hold (None: delete it)


def apply(root: Path, proposal: Proposal) -> None:
    """Write ``proposal``: every file or none; :class:`StaleFileError` if a file changed since."""
    _transact(Path(root), [_step(root, c.path, c.before, c.after) for c in proposal.changes], "apply")


def revert(root: Path, proposal: Proposal) -> None:
    """Undo an applied ``proposal``: restore every file's ``before`` and delete the files it created."""
    _transact(Path(root), [_step(root, c.path, c.after, c.before) for c in proposal.changes], "undo")


def _step(root: Path, path: str, expected: str | None, content: str | None) -> _Step:
    return _Step(safe_relpath(path), resolve(Path(root), path), expected, content)


def _transact(root: Path, steps: list[_Step], what: str) -> None:
    modes: dict[Path, int] = {}
    for step in steps:  # 1. everything is as the proposal expects
        now = _read_exact(root, step.path)
        if now != step.expected:
            state = "does not exist" if now is None else "was changed"
            since = "since the edit was proposed" if what == "apply" else "since the edit was applied"
            raise StaleFileError(f"{step.path} {state} {since}; nothing was written ({what} refused)")
        if now is not None:
            modes[step.file] = stat.S_IMODE(step.file.stat().st_mode)
    temps: dict[Path, str] = {}
    made_dirs: list[Path] = []
    done: list[_Step] = []
    current = ""
    try:
        for step in steps:  # 2. new contents beside their targets, on disk
            current = step.path
            if step.content is not None:
                made_dirs += _make_parents(step.file.parent)
                temps[step.file] = _write_temp(step.file, step.content, modes.get(step.file, _NEW_FILE_MODE))
        for step in steps:  # 3. moved into place (or deleted), one by one
            current = step.path
            if step.content is None:
                os.unlink(step.file)
            else:
                os.replace(temps[step.file], step.file)
                del temps[step.file]
            done.append(step)
        for directory in {s.file.parent for s in steps}:
            _fsync_dir(directory)
    except BaseException as e:
        problems = _rollback(done, modes)
        for temp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(temp)
        for directory in reversed(made_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if not isinstance(e, Exception):
            raise
        detail = "; restoring also failed for " + ", ".join(problems) if problems else "; no file was changed"
        raise EditError(f"{what} failed at {current}: {e}{detail}") from e


def _rollback(done: list[_Step], modes: dict[Path, int]) -> list[str]:
    problems = []
    for step in reversed(done):
        try:
            if step.expected is None:
                os.unlink(step.file)
            else:
                temp = None
                try:
                    temp = _write_temp(step.file, step.expected, modes.get(step.file, _NEW_FILE_MODE))
                    os.replace(temp, step.file)
                except OSError:
                    if temp is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(temp)
                    step.file.write_bytes(step.expected.encode("utf-8"))  # last resort: in place
                    os.chmod(step.file, modes.get(step.file, _NEW_FILE_MODE))
        except OSError as e:  # pragma: no cover - disk gone while restoring
            logger.error("could not restore %s: %s", step.path, e)
            problems.append(step.path)
    return problems


def _read_exact(root: Path, path: str) -> str | None:
    try:
        return read_text(root, path)
    except EditError:  # not UTF-8 text (or no longer a file): never equal to a proposal's text, so stale
        return "\0<not utf-8>"


def _make_parents(directory: Path) -> list[Path]:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir()
    return list(reversed(missing))


def _write_temp(file: Path, content: str, mode: int) -> str:
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".corolla-tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- JSON ----------------------------------------------------------------------------------------
def proposal_to_json(proposal: Proposal) -> dict:
    """A JSON-ready dict of ``proposal`` (what the session store keeps)."""
    return {"version": JSON_VERSION,
            "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in proposal.changes],
            "diff": proposal.diff, "notes": list(proposal.notes)}


def proposal_from_json(data: dict) -> Proposal:
    """The :class:`Proposal` of :func:`proposal_to_json`'s dict; :class:`EditError` if it is not one."""
    try:
        if data.get("version", JSON_VERSION) != JSON_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        changes = []
        for c in data["changes"]:
            path, before, after = c["path"], c["before"], c["after"]
            if not isinstance(path, str) or not isinstance(after, str) or not isinstance(before, (str, type(None))):
                raise ValueError("change fields of the wrong type")
            changes.append(FileChange(safe_relpath(path), before, after))
        notes = tuple(str(n) for n in data.get("notes", ()))
        diff = data.get("diff")
        if not isinstance(diff, str):
            diff = unified_diff(changes)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EditError(f"not a stored edit proposal: {e}") from e
    return Proposal(tuple(changes), diff, notes)
