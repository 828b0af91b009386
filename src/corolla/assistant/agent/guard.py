"""The guard over a project's existing tests: an agent must not make failing tests pass by deleting or
weakening them.

Before anything runs, the test functions of every Python test file are snapshotted by ``ast`` (names,
assert counts, skips); afterwards :func:`check_tests` lists each test that disappeared, lost asserts or
became skipped, and each test file that was deleted or no longer parses. What to do about a violation
(put the file back) is the workflow's business (:mod:`.workflows`).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from corolla.assistant.agent.testing import is_test_file
from corolla.assistant.context import list_files
from corolla.assistant.workspace import read_text


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
        found = []
        for name, info in before.items():
            if name not in now:
                found.append(f"{name} was removed")
            elif now[name].asserts < info.asserts:
                found.append(f"{name} lost asserts ({info.asserts} -> {now[name].asserts})")
            elif now[name].skipped and not info.skipped:
                found.append(f"{name} was marked skipped")
        if found:
            problems[path] = [f"{path}: {f}" for f in found]
    return problems
