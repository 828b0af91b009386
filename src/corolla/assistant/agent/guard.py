"""The guard over a project's existing tests: an agent must not make failing tests pass by deleting or
weakening them.

Before anything runs, the test functions of every Python test file are snapshotted by ``ast`` (names,
assert counts, skips); afterwards :func:`check_tests` lists each test that disappeared, lost asserts or
became skipped, and each test file that was deleted or no longer parses. What to do about a violation
(put the file back) is the workflow's business (:mod:`.workflows`).

The same rule also holds at write time: a :class:`TestGuard` in the agent's tool context is asked about
every write (a tool's edit or a code block, in every mode) before it is made, and a write that would
delete or weaken an existing test is refused with the reason for the model, the file untouched.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from corolla.assistant.agent.testing import is_test_file
from corolla.assistant.context import list_files
from corolla.assistant.workspace import read_text

if TYPE_CHECKING:
    from corolla.assistant.edits import Allowance, FileChange


@dataclasses.dataclass(frozen=True)
class GuardedTest:
    asserts: int  # assert statements, unittest self.assert*/fail* calls, pytest.raises/warns blocks
    skipped: bool  # a skip/xfail decorator or a pytest.skip() call


def tests_in_source(source: str) -> dict[str, GuardedTest] | None:
    """The tests in a Python file, by qualified name (``Class.test_x``); None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    found: dict[str, GuardedTest] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                found[prefix + node.name] = GuardedTest(_count_asserts(node), _skipped(node))
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return found


def _count_asserts(fn: ast.AST) -> int:
    count = 0
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            count += 1
        elif isinstance(node, ast.Call):
            name = _call_name(node.func)
            if name.startswith(("assert", "fail")) or name in ("raises", "warns", "deprecated_call"):
                count += 1
    return count


def _skipped(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    names = [_call_name(d.func if isinstance(d, ast.Call) else d) for d in fn.decorator_list]
    calls = [_call_name(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)]
    return any(n in ("skip", "skipif", "xfail", "skipIf", "skipUnless") for n in names + calls)


def _call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def snapshot_tests(root: Path) -> dict[str, dict[str, GuardedTest]]:
    """The tests of every Python test file in the workspace (files that do not parse are left out)."""
    out = {}
    for path in list_files(Path(root)):
        if path.endswith(".py") and is_test_file(path):
            text = read_text(Path(root), path)
            tests = tests_in_source(text) if text is not None else None
            if tests is not None:
                out[path] = tests
    return out


def check_tests(root: Path, snapshot: dict[str, dict[str, GuardedTest]]) -> dict[str, list[str]]:
    """What happened to the snapshotted tests: ``{path: [violation, ...]}`` for the files that broke the rule."""
    problems: dict[str, list[str]] = {}
    for path, before in snapshot.items():
        text = read_text(Path(root), path)
        if text is None:
            problems[path] = [f"{path} was deleted"]
            continue
        now = tests_in_source(text)
        if now is None:
            problems[path] = [f"{path} no longer parses, so its tests cannot be checked"]
            continue
        found = [what for _, what in weakened(before, now)]
        if found:
            problems[path] = [f"{path}: {f}" for f in found]
    return problems


def weakened(before: dict[str, GuardedTest], now: dict[str, GuardedTest]) -> list[tuple[str, str]]:
    """(test name, what happened to it) for each test of ``before`` that ``now`` removed, weakened or skipped."""
    found = []
    for name, info in before.items():
        if name not in now:
            found.append((name, f"{name} was removed"))
        elif now[name].asserts < info.asserts:
            found.append((name, f"{name} lost asserts ({info.asserts} -> {now[name].asserts})"))
        elif now[name].skipped and not info.skipped:
            found.append((name, f"{name} was marked skipped"))
    return found


@dataclasses.dataclass
class TestGuard:
    """The rule of :func:`check_tests` at write time: :meth:`check` lists what a write would do to existing tests.

    ``snapshot``: the tests that count as existing (a workflow's, taken before it started). ``lazy``: a
    Python test file first written in this run that the snapshot does not hold counts with the tests it had
    just before that first write (a plain agent run: no scan of the workspace up front; a file the run
    creates has none). ``strict``: the request cannot allow anything (a workflow's prompts quote the
    failing tests by name); otherwise a test the request names with "remove", "delete", ... may go, as
    definitions may (:class:`corolla.assistant.edits.Allowance`). ``refused``: every violation refused so far.
    """

    __test__ = False  # not a pytest class

    snapshot: dict[str, dict[str, GuardedTest]] = dataclasses.field(default_factory=dict)
    lazy: bool = True
    strict: bool = False
    refused: list[str] = dataclasses.field(default_factory=list)
    _seen: set[str] = dataclasses.field(default_factory=set)

    def check(self, changes: Iterable[FileChange], allow: Allowance | None = None) -> list[str]:
        """The violations of ``changes`` (``path: test_x was removed``, ...); [] when the write may be made."""
        problems: list[str] = []
        for change in changes:
            before = self._existing(change)
            if not before:
                continue
            now = tests_in_source(change.after)
            if now is None:
                problems.append(f"{change.path} would no longer parse, so its tests could not run")
                continue
            for name, what in weakened(before, now):
                if not self._allowed(name, allow):
                    problems.append(f"{change.path}: {what}")
        return problems

    def refuse(self, changes: Iterable[FileChange], allow: Allowance | None = None) -> str | None:
        """None when ``changes`` keep every existing test, else the refusal to send back (and it is recorded)."""
        problems = self.check(changes, allow)
        if not problems:
            return None
        self.refused += [p for p in problems if p not in self.refused]
        return (f"it would delete or weaken existing tests ({'; '.join(problems)}). Existing tests must keep "
                "their asserts and must not be removed or skipped: change the code under test instead")

    def refuse_edits(self, root: Path, edits: list, allow: Allowance | None = None) -> str | None:
        """:meth:`refuse` for edits that another check refused (the structure guard: a test function removed),
        so that the model hears the reason that concerns tests; None when they keep every existing test."""
        from corolla.assistant.edits import propose
        from corolla.assistant.edits.structure import EVERYTHING
        from corolla.assistant.errors import EditError

        try:
            proposal = propose(Path(root), list(edits), allow=EVERYTHING)
        except EditError:
            return None
        return self.refuse(proposal.changes, allow)

    def _existing(self, change: FileChange) -> dict[str, GuardedTest] | None:
        path = change.path
        if path in self.snapshot or not self.lazy or path in self._seen:
            return self.snapshot.get(path)
        self._seen.add(path)
        if not (path.endswith(".py") and is_test_file(path)) or change.before is None:
            return None
        tests = tests_in_source(change.before)
        if tests:
            self.snapshot[path] = tests
        return tests

    def _allowed(self, name: str, allow: Allowance | None) -> bool:
        if self.strict or allow is None:
            return False
        return allow.everything or name in allow.names or name.rsplit(".", 1)[-1] in allow.names
