"""`corolla tests --until-green` and `corolla refactor` as a user runs them, over a scripted model."""

from __future__ import annotations

import json

from tests.assistant.conftest import CALC, git
from tests.assistant.test_cli_assistant import corolla

PASSING_TESTS = "```python\nfrom calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n```"


def call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_tests_until_green_writes_tests_that_pass(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add("unit tests", PASSING_TESTS)
    done = corolla(workspace, base, "tests", "calc.py", "--until-green", "--rounds", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "def test_add" in (workspace / "tests" / "test_calc.py").read_text()
    assert "green" in done.stdout.lower()


def test_refactor_that_breaks_the_tests_is_reverted(scripted, llm_model, workspace):
    _, base = scripted
    (workspace / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "tests")
    llm_model.queue(call("edit", path="calc.py", search="def add(a, b):", replace="def plus(a, b):"),
                    "Renamed add to plus.", "I could not fix the tests.")
    done = corolla(workspace, base, "refactor", "rename add to plus", "--max-steps", "4")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "revert" in done.stdout.lower()
    assert (workspace / "calc.py").read_text() == CALC
