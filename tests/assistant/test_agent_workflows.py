"""Tests until green and refactor against a scripted model: rounds, the guard over existing tests,
and the revert of a refactoring that turns green tests red."""

from __future__ import annotations

import json
from pathlib import Path

from corolla.assistant.agent import guard, workflows
from corolla.assistant.agent.guard import check_tests, snapshot_tests
from corolla.assistant.agent.loop import AgentConfig
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.report import WorkflowReport
from corolla.assistant.agent.workflows import refactor
from corolla.assistant.sessions import SessionStore
from tests.assistant.conftest import git

MEAN_OLD = "    return sum(values) / len(values)"
MEAN_NEW = "    if not values:\n        return 0.0\n    return sum(values) / len(values)"

GENERATED = '''```python
from calc import add, mean


def test_add():
    assert add(1, 2) == 3


def test_mean_of_nothing_is_zero():
    assert mean([]) == 0.0
```'''

EXISTING = '''\
from calc import add, mean


def test_add_existing():
    assert add(2, 2) == 4
    assert add(-1, 1) == 0


def test_mean_empty_is_zero():
    assert mean([]) == 0.0
'''


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def files(root: Path) -> dict[str, str]:
    """Every file of the project but git's and corolla's own, with its text."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()
            and not {".git", ".corolla", "__pycache__", ".pytest_cache"} & set(p.relative_to(root).parts)}


def commit_tests(root: Path, text: str) -> None:
    (root / "tests" / "test_calc.py").write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tests")


# --- the guard (pure) ------------------------------------------------------------------------------
def test_test_functions_count_asserts_and_skips():
    source = '''\
import pytest, unittest

def test_a():
    assert 1
    with pytest.raises(ValueError):
        int("x")

@pytest.mark.skip
def test_b():
    assert 1

class TestC(unittest.TestCase):
    def test_d(self):
        self.assertEqual(1, 1)
        self.assertTrue(True)

def helper():
    assert 1
'''
    found = guard.tests_in_source(source)
    assert {k: (v.asserts, v.skipped) for k, v in found.items()} == {
        "test_a": (2, False), "test_b": (1, True), "TestC.test_d": (2, False)}
    assert guard.tests_in_source("def test_x(:\n") is None


def test_removed_weakened_or_skipped_tests_are_violations(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_a():\n    assert 1\n    assert 2\n\n"
                                                  "def test_b():\n    assert 1\n\ndef test_c():\n    assert 1\n")
    snap = snapshot_tests(tmp_path)
    assert check_tests(tmp_path, snap) == {}
    (tmp_path / "tests" / "test_x.py").write_text("import pytest\n\ndef test_a():\n    assert 1\n\n"
                                                  "@pytest.mark.skip\ndef test_c():\n    assert 1\n\n"
                                                  "def test_new():\n    pass\n")
    assert check_tests(tmp_path, snap) == {"tests/test_x.py": [
        "tests/test_x.py: test_a lost asserts (2 -> 1)", "tests/test_x.py: test_b was removed",
        "tests/test_x.py: test_c was marked skipped"]}
    (tmp_path / "tests" / "test_x.py").unlink()
    assert check_tests(tmp_path, snap) == {"tests/test_x.py": ["tests/test_x.py was deleted"]}


# --- tests until green ---------------------------------------------------------------------------
def test_a_failing_test_is_fixed_in_the_second_round(llm, llm_model, workspace):
    llm_model.queue(GENERATED,  # round 1: /tests writes tests; mean([]) divides by zero
                    call("edit", path="calc.py", search=MEAN_OLD, replace=MEAN_NEW),  # round 2: the agent
                    call("run_tests"),
                    "mean() of an empty list is 0.0 now.")
    store = SessionStore(workspace)
    report = workflows.tests_until_green(llm, workspace, "calc.py", rounds=3, policy=CommandPolicy(), store=store)
    assert isinstance(report, WorkflowReport)
    assert report.status == "green" and report.rounds == 2, report.to_text()
    assert [r["passed"] for r in report.test_results] == [False, True]
    assert "ZeroDivisionError" in report.test_results[0]["output"]
    assert report.test_results[0]["command"].endswith("tests/test_calc.py")
    assert sorted(report.changed_files) == ["calc.py", "tests/test_calc.py"]
    assert "mean of nothing" not in (workspace / "calc.py").read_text()
    assert "def test_mean_of_nothing_is_zero" in (workspace / "tests" / "test_calc.py").read_text()
    assert "ZeroDivisionError" in llm_model.requests[1].prompt  # the failure was fed back
    text = report.to_text()
    assert "tests until green: green after 2 rounds" in text and "round 1: tests FAIL" in text
    assert "round 2: tests pass" in text
    types = [e.type for e in store.events(report.session_id)]
    assert types[0] == "workflow" and types.count("tests") == 2 and types[-1] == "workflow_report"


def test_deleting_an_existing_test_is_refused_and_reverted(llm, llm_model, workspace):
    commit_tests(workspace, EXISTING)  # test_mean_empty_is_zero fails: mean([]) divides by zero
    removal = "def test_mean_empty_is_zero():\n    assert mean([]) == 0.0\n"
    llm_model.queue('```python\nfrom calc import add\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n```',
                    call("edit", path="tests/test_calc.py", search=removal, replace=""),
                    call("run_tests"),
                    "Removed the failing test; all green.")
    report = workflows.tests_until_green(llm, workspace, "calc.py", rounds=2, policy=CommandPolicy())
    assert report.status == "red", report.to_text()
    assert report.refused == ["tests/test_calc.py: test_mean_empty_is_zero was removed"]
    after = (workspace / "tests" / "test_calc.py").read_text()
    assert after.startswith(EXISTING.rstrip("\n")) and "def test_add_zero" in after  # put back as the round began
    assert [r["passed"] for r in report.test_results] == [False, False]
    assert "Refused, the tests kept as they were" in report.to_text()


# --- refactor ---------------------------------------------------------------------------------------
def test_a_refactor_that_breaks_the_tests_is_reverted(llm, llm_model, workspace):
    commit_tests(workspace, EXISTING.replace("mean([]) == 0.0", "mean([2, 4]) == 3"))
    before = files(workspace)
    llm_model.queue(call("edit", path="calc.py", search="def add(a, b):", replace="def plus(a, b):"),
                    "Renamed add to plus.",  # round 1 ends: the tests now fail (they import add)
                    "I could not find the problem.")  # the fix round does nothing
    report = refactor(llm, workspace, "rename add to plus", policy=CommandPolicy(),
                      config=AgentConfig(max_steps=4, mode="tools"))
    assert report.status == "reverted", report.to_text()
    assert files(workspace) == before  # every file as it was
    assert report.changed_files == [] and report.rounds == 2
    assert [(r["round"], r["passed"]) for r in report.test_results] == [
        ("before", True), ("round 1", False), ("round 2", False), ("after revert", True)]
    assert "every change was reverted (calc.py)" in report.to_text()
    assert "ImportError" in llm_model.requests[2].prompt or "cannot import" in llm_model.requests[2].prompt


def test_a_refactor_that_keeps_the_tests_green(llm, llm_model, workspace):
    commit_tests(workspace, EXISTING.replace("mean([]) == 0.0", "mean([2, 4]) == 3"))
    llm_model.queue(call("edit", path="calc.py", search=MEAN_OLD,
                         replace="    total = sum(values)\n    return total / len(values)"),
                    call("run_tests"), "Introduced a total variable.")
    report = refactor(llm, workspace, "name the sum in mean", policy=CommandPolicy())
    assert report.status == "green" and report.rounds == 1 and report.changed_files == ["calc.py"]
    assert "total = sum(values)" in (workspace / "calc.py").read_text()


def test_weakening_a_test_during_a_refactor_is_refused(llm, llm_model, workspace):
    commit_tests(workspace, EXISTING.replace("mean([]) == 0.0", "mean([2, 4]) == 3"))
    before = files(workspace)
    llm_model.queue(call("edit", path="tests/test_calc.py", search="    assert add(-1, 1) == 0\n", replace=""),
                    "Simplified the tests.")
    report = refactor(llm, workspace, "simplify", policy=CommandPolicy())
    assert report.refused == ["tests/test_calc.py: test_add_existing lost asserts (2 -> 1)"]
    assert files(workspace) == before and report.status == "green"
