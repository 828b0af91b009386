"""Blocks mode one can trust to finish: every write passes the test guard (a write that deletes or weakens an
existing test is refused, the file untouched), blocks can target a line range (``calc.py:5-6``), the lines a
task names stay tracked as writes move them, and a changed signature still finds its definition."""

from __future__ import annotations

import pytest

from corolla.assistant.agent import guard as guard_mod
from corolla.assistant.agent import workflows
from corolla.assistant.agent.guard import TestGuard
from corolla.assistant.agent.loop import Agent, AgentConfig
from corolla.assistant.agent.modes import WORKFLOW_MODE, uses_blocks
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.prompts import fix_tests_task, refactor_fix_task, refactor_task
from corolla.assistant.agent.testing import failing_tests
from corolla.assistant.agent.writes import Focus, WriteError, find_writes, map_range, named_range, task_ranges
from corolla.assistant.edits import Allowance, FileChange, propose
from corolla.assistant.errors import SyntaxBreakError
from corolla.assistant.sessions import SessionStore
from tests.assistant.conftest import CALC, TESTS, git

MEAN_FIXED = '''def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)'''
CALC_FIXED = CALC.replace("def mean(values):\n    return sum(values) / len(values)", MEAN_FIXED)
TESTS_WITHOUT_EMPTY = TESTS.split("\n\ndef test_mean_of_empty_list_raises")[0] + "\n"


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


def blocks_run(llm, root, task: str, steps: int = 4, mode: str = "blocks", edit_first: bool = False, **config):
    """The blocks loop itself (``edit_first``: start with the edit command's single edit, off unless asked)."""
    config = AgentConfig(max_steps=steps, mode=mode, edit_first=edit_first, **config)
    return Agent(llm, root, policy=CommandPolicy(), config=config).run(task)


def after(root, writes) -> dict[str, str]:
    return {c.path: c.after for c in propose(root, [w.edit for w in writes]).changes}


# --- the guard at write time (pure) --------------------------------------------------------------------
def test_the_guard_refuses_removed_weakened_or_skipped_tests_of_a_file_as_it_was_first_written():
    guard = TestGuard()
    before = "def test_a():\n    assert 1\n    assert 2\n\n\ndef test_b():\n    assert 1\n"
    weaker = "import pytest\n\n\n@pytest.mark.skip\ndef test_a():\n    assert 1\n"
    assert guard.check([FileChange("tests/test_x.py", before, weaker)]) == [
        "tests/test_x.py: test_a lost asserts (2 -> 1)", "tests/test_x.py: test_b was removed"]
    # the file counts as it was before the first write seen, not as the last write left it
    assert guard.check([FileChange("tests/test_x.py", weaker, weaker + "\n\ndef test_c():\n    assert 1\n")]) == [
        "tests/test_x.py: test_a lost asserts (2 -> 1)", "tests/test_x.py: test_b was removed"]
    assert guard.check([FileChange("tests/test_x.py", before, before + "\n\ndef test_c():\n    assert 3\n")]) == []
    assert guard.check([FileChange("tests/test_new.py", None, "def test_n():\n    assert 1\n")]) == []
    assert guard.check([FileChange("tests/test_new.py", "def test_n():\n    assert 1\n", "")]) == []  # its own file
    assert guard.check([FileChange("calc.py", "def test_like():\n    assert 1\n", "")]) == []  # not a test file
    assert guard.refused == []


def test_the_guard_lets_the_request_name_a_test_to_remove_unless_strict():
    source = "def test_old():\n    assert 1\n\n\ndef test_b():\n    assert 1\n"
    before = {"tests/test_x.py": guard_mod.tests_in_source(source)}
    change = [FileChange("tests/test_x.py", "", "def test_b():\n    assert 1\n")]
    allow = Allowance.from_request("remove the obsolete test_old")
    assert TestGuard(dict(before), lazy=False).check(change, allow) == []
    assert TestGuard(dict(before), lazy=False).check(change, Allowance.from_request("fix test_old")) != []
    strict = TestGuard(dict(before), lazy=False, strict=True)
    assert strict.refuse(change, allow).startswith("it would delete or weaken existing tests (tests/test_x.py: "
                                                   "test_old was removed)")
    assert strict.refused == ["tests/test_x.py: test_old was removed"]


# --- the guard in blocks mode ------------------------------------------------------------------------------
def test_blocks_mode_refuses_a_write_that_deletes_a_test_and_then_applies_the_fix(llm, llm_model, project):
    llm_model.queue("tests/test_calc.py\n" + fenced(TESTS_WITHOUT_EMPTY.rstrip()),  # make it pass by deleting it
                    "calc.py\n" + fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py: make the tests in tests/test_calc.py pass.")
    assert report.status == "done" and report.tests["passed"], report.to_text()
    assert (project / "tests" / "test_calc.py").read_text() == TESTS  # untouched
    assert (project / "calc.py").read_text() == CALC_FIXED  # the legitimate edit was applied
    assert report.changed_files == ["calc.py"]
    second = llm_model.requests[1].prompt.split("<|im_start|>user")[-1]
    assert "Result of write (failed):" in second
    assert "tests/test_calc.py: test_mean_of_empty_list_raises was removed" in second
    assert "change the code under test instead" in second


def test_blocks_mode_refuses_weakening_a_test_in_a_block_that_also_fixes_the_code(llm, llm_model, project):
    weak = TESTS.replace("    with pytest.raises(ValueError):\n        mean([])", "    mean([1])")
    llm_model.queue("calc.py\n" + fenced(MEAN_FIXED) + "\n\ntests/test_calc.py\n" + fenced(weak.rstrip()),
                    "I could not do it without changing the tests.")
    report = blocks_run(llm, project, "In calc.py: make the tests in tests/test_calc.py pass.")
    assert (project / "tests" / "test_calc.py").read_text() == TESTS
    assert (project / "calc.py").read_text() == CALC  # all or nothing: the fix in the same reply is not made
    assert report.changed_files == []
    assert "test_mean_of_empty_list_raises lost asserts (1 -> 0)" in llm_model.requests[1].prompt


def test_the_guard_can_be_turned_off(llm, llm_model, project):
    weak = TESTS.replace("    with pytest.raises(ValueError):\n        mean([])", "    mean([1])")
    llm_model.queue("tests/test_calc.py\n" + fenced(weak.rstrip()))
    report = blocks_run(llm, project, "In calc.py: make the tests in tests/test_calc.py pass.", guard_tests=False)
    assert report.tests["passed"] and report.changed_files == ["tests/test_calc.py"]


def test_tools_mode_edits_pass_the_same_guard(llm, llm_model, project):
    from tests.assistant.test_agent_loop import call

    llm_model.queue(call("edit", path="tests/test_calc.py", search="    with pytest.raises(ValueError):\n"
                         "        mean([])\n", replace="    pass\n"), "Done.")
    report = blocks_run(llm, project, "Make the tests pass.", mode="tools")
    assert (project / "tests" / "test_calc.py").read_text() == TESTS and report.changed_files == []
    assert "lost asserts" in llm_model.requests[1].prompt


# --- line ranges (pure) --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, found", [
    ("calc.py:5-6", ("calc.py", 5, 6)), ("**src/calc.py:5-6**", ("src/calc.py", 5, 6)),
    ("calc.py:5", ("calc.py", 5, 5)), ("calc.py (lines 5-6)", ("calc.py", 5, 6)),
    ("python calc.py:5-6", ("calc.py", 5, 6)), ("# File: calc.py lines 5\u20136", ("calc.py", 5, 6)),
    ("calc.py:5:3", None),
    ("calc.py", None), ("calc.py:", None), ("Here is calc.py: the fix", None),
])
def test_a_range_is_read_from_a_heading_or_an_info_string(text, found):
    assert named_range(text) == found


def test_a_task_names_ranges(workspace):
    assert task_ranges(workspace, "In calc.py lines 5-6: fix mean.") == {"calc.py": (5, 6)}
    assert task_ranges(workspace, "Fix lines 5-6 of calc.py, see nothere.py:1-2") == {"calc.py": (5, 6)}
    assert task_ranges(workspace, "Fix calc.py:5-6.") == {"calc.py": (5, 6)}
    # what tracebacks and compilers quote is no range to change
    assert task_ranges(workspace, "calc.py:6: ZeroDivisionError\ncalc.py:5:3: error") == {}


def test_a_range_block_replaces_exactly_those_lines(workspace):
    writes = find_writes("calc.py:5-6\n" + fenced(MEAN_FIXED), workspace, [])
    assert [(w.how, w.lines) for w in writes] == [("lines 5-6", (5, 6))]
    assert after(workspace, writes) == {"calc.py": CALC_FIXED}
    writes = find_writes(fenced("    return a + b + 0", "python calc.py:2"), workspace, [])
    assert after(workspace, writes) == {"calc.py": CALC.replace("return a + b", "return a + b + 0")}
    # lines that start inside a definition: exactly those, nothing else
    writes = find_writes("calc.py:6\n" + fenced("    return sum(values) / max(len(values), 1)"), workspace, [])
    assert after(workspace, writes) == {"calc.py": CALC.replace("/ len(values)", "/ max(len(values), 1)")}


def test_a_range_outside_the_file_is_refused(workspace):
    with pytest.raises(WriteError, match="lines 6-9 are not in calc.py: it has 6 lines"):
        find_writes("calc.py:6-9\n" + fenced(MEAN_FIXED), workspace, [])
    with pytest.raises(WriteError, match="lines 3-2 are not in calc.py"):
        find_writes("calc.py:3-2\n" + fenced(MEAN_FIXED), workspace, [])


def test_a_range_write_that_breaks_the_syntax_is_refused(workspace):
    writes = find_writes("calc.py:5-6\n" + fenced("def mean(values)\n    return 0"), workspace, [])
    with pytest.raises(SyntaxBreakError, match="would break the python syntax"):
        propose(workspace, [w.edit for w in writes])


def test_a_range_write_of_javascript_is_checked_too(workspace):
    (workspace / "slug.js").write_text('function slugify(text) {\n  return text.toLowerCase();\n}\n')
    writes = find_writes("slug.js:2\n" + fenced("  return text.toLowerCase(;", "javascript"), workspace, [])
    with pytest.raises(SyntaxBreakError):
        propose(workspace, [w.edit for w in writes])


def test_a_changed_signature_finds_its_definition(workspace):
    new = ("def mean(values, default=None):\n    if not values:\n        return default\n"
           "    return sum(values) / len(values)")
    writes = find_writes("calc.py\n" + fenced(new), workspace, [])
    assert writes[0].how == "lines 5-6"
    assert after(workspace, writes) == {"calc.py": CALC.replace(
        "def mean(values):\n    return sum(values) / len(values)", new)}


def test_a_decorated_definition_is_replaced_with_its_decorators(workspace):
    (workspace / "box.py").write_text("import functools\n\n\n@functools.cache\ndef size():\n    return 1\n\n\n"
                                      "def other():\n    return 2\n")
    writes = find_writes("box.py\n" + fenced("@functools.cache\ndef size():\n    return 3"), workspace, [])
    assert after(workspace, writes)["box.py"].count("@functools.cache") == 1
    writes = find_writes("box.py\n" + fenced("@functools.cache\ndef size(n=1):\n    return n"), workspace, [])
    assert after(workspace, writes)["box.py"] == ("import functools\n\n\n@functools.cache\ndef size(n=1):\n"
                                                  "    return n\n\n\ndef other():\n    return 2\n")


# --- the focus: the task's lines, followed as writes move them ----------------------------------------------
def test_a_range_is_followed_through_changes():
    old = ["a", "b", "c", "d", "e"]
    assert map_range(old, ["x", *old], 2, 3) == (3, 4)  # moved down
    assert map_range(old, ["a", "b", "B", "c", "d", "e"], 2, 3) == (2, 4)  # grew inside
    assert map_range(old, ["a", "b", "c", "c2", "d", "e"], 2, 3) == (2, 4)  # grew at its end
    assert map_range(old, ["a", "d", "e"], 2, 3) is None  # gone
    assert map_range(old, old + ["f"], 2, 3) == (2, 3)
    focus = Focus()
    focus.add("calc.py", 5, 6)
    focus.moved("calc.py", CALC, CALC_FIXED, replaced=(5, 6))
    assert focus.current("calc.py") == (5, 8)
    assert focus.resolve("calc.py", 5, 6) == (5, 8) and focus.resolve("calc.py", 1, 2) == (1, 2)


def test_blocks_mode_shows_the_task_s_lines_and_keeps_them_current(llm, llm_model, project):
    wrong = 'def mean(values):\n    if not values:\n        return 0\n    return sum(values) / len(values)'
    llm_model.queue("calc.py:5-6\n" + fenced(wrong),  # lines 5-8 now; the tests still fail
                    "calc.py:5-6\n" + fenced(MEAN_FIXED))  # the old numbers again: they mean the same lines
    report = blocks_run(llm, project, "In calc.py lines 5-6: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.tests["passed"], report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    first = llm_model.requests[0].prompt
    assert "The lines to change, calc.py:5-6:\ncalc.py:5-6\n```python\n" + MEAN_FIXED.split("\n")[0] in first
    assert "path:FIRST-LAST" in first  # the system prompt tells the model about ranges


def test_a_block_for_the_task_s_lines_that_matches_no_line_replaces_them(llm, llm_model, project):
    llm_model.queue(fenced('def mean(values):\n    """The mean."""\n    if not values:\n'
                           '        raise ValueError("mean of an empty list")\n    return sum(values) / len(values)'))
    report = blocks_run(llm, project, "In calc.py lines 5-6: make mean() raise ValueError for an empty list.")
    assert report.tests["passed"] and (project / "calc.py").read_text().count("def mean") == 1


# --- the workflows' mode ---------------------------------------------------------------------------------
def test_the_workflows_use_the_measured_mode_and_word_their_tasks_for_it():
    assert WORKFLOW_MODE in ("auto", "blocks", "tools")
    assert uses_blocks("auto", True) and not uses_blocks("auto", False) and uses_blocks("blocks", False)
    assert "run_tests" in fix_tests_task("calc.py", "tests/test_calc.py", "E") and \
        "run_tests" not in fix_tests_task("calc.py", "tests/test_calc.py", "E", blocks=True)
    assert "run after each change" in refactor_task("split f", "pytest", blocks=True)
    assert "run_tests" not in refactor_fix_task("split f", "E", blocks=True)


def test_until_green_in_blocks_mode_fixes_the_code_and_refuses_deleting_a_test(llm, llm_model, workspace):
    (workspace / "tests" / "test_calc.py").write_text(TESTS)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "tests")
    llm_model.queue(fenced("from calc import add\n\n\ndef test_add_more():\n    assert add(1, 1) == 2"),  # round 1
                    "tests/test_calc.py\n" + fenced(TESTS_WITHOUT_EMPTY.rstrip()),  # round 2: refused
                    "calc.py\n" + fenced(MEAN_FIXED))  # then the fix
    report = workflows.tests_until_green(llm, workspace, "calc.py", rounds=2, policy=CommandPolicy(),
                                         config=AgentConfig(max_steps=4, mode="blocks"))
    assert report.status == "green", report.to_text()
    assert report.refused == ["tests/test_calc.py: test_mean_of_empty_list_raises was removed"]
    assert (workspace / "calc.py").read_text() == CALC_FIXED
    text = (workspace / "tests" / "test_calc.py").read_text()
    assert text.startswith(TESTS.rstrip("\n")) and "def test_add_more" in text
    task = llm_model.requests[1].prompt
    assert "calc.py\n```python\n" in task and "run_tests" not in task.split("<|im_start|>user")[-1]


def test_refactor_from_the_command_line_in_blocks_mode(scripted, llm_model, workspace):
    from tests.assistant.test_cli_assistant import corolla

    _, base = scripted
    (workspace / "tests" / "test_calc.py").write_text("from calc import mean\n\n\ndef test_mean():\n"
                                                      "    assert mean([2, 4]) == 3\n")
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "tests")
    llm_model.queue("calc.py\n" + fenced("def mean(values):\n    total = sum(values)\n    return total / len(values)"))
    done = corolla(workspace, base, "refactor", "in calc.py, name the sum in mean", "--mode", "blocks")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "total = sum(values)" in (workspace / "calc.py").read_text()
    assert "```python" in llm_model.requests[0].prompt  # blocks mode: the file was shown, no tools offered
    assert "<tools>" not in llm_model.requests[0].prompt


# --- a small model that loses the task or repeats itself ----------------------------------------------------
def test_blocks_mode_puts_the_task_after_the_files_and_repeats_it_after_a_failure(llm, llm_model, project):
    wrong = 'def mean(values):\n    if not values:\n        return 0\n    return sum(values) / len(values)'
    llm_model.queue("calc.py\n" + fenced(wrong), "calc.py\n" + fenced(MEAN_FIXED))
    task = "In calc.py: make mean() raise ValueError for an empty list.\nKeep add() as it is."
    report = blocks_run(llm, project, task)
    assert report.status == "done" and report.steps == 2, report.to_text()
    first = llm_model.requests[0].prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert first.startswith("calc.py\n```python\n") and first.endswith(task)  # the files, then the task
    second = llm_model.requests[1].prompt.split("<|im_start|>user")[-1]
    assert "The tests fail." in second
    assert "The task: In calc.py: make mean() raise ValueError for an empty list." in second
    assert "Keep add()" not in second  # only its first line


def test_a_model_that_sends_an_earlier_reply_again_ends_the_run(llm, llm_model, project):
    wrong = 'def mean(values):\n    if not values:\n        return 0\n    return sum(values) / len(values)'
    llm_model.queue("calc.py\n" + fenced(wrong), "calc.py\n" + fenced(CALC.rstrip()), "calc.py\n" + fenced(wrong))
    report = blocks_run(llm, project, "In calc.py: make mean() raise ValueError for an empty list.", steps=6)
    assert report.status == "repeating" and report.steps == 3, report.to_text()
    assert "sent one of its earlier replies again" in report.to_text()
    assert len(llm_model.requests) == 3


# --- the first step: the edit command's single edit ----------------------------------------------------------
def test_blocks_mode_starts_with_the_edit_commands_edit_and_stops_when_the_tests_pass(llm, llm_model, project):
    llm_model.queue(fenced(MEAN_FIXED))  # the new version of lines 5-6, as `corolla edit calc.py:5-6` asks
    task = ("In calc.py lines 5-6: make mean() raise ValueError for an empty list.\n"
            "The tests in tests/test_calc.py check it; do not change tests/test_calc.py.")  # a test file named too
    report = blocks_run(llm, project, task, edit_first=True)
    assert report.status == "done" and report.tests["passed"] and report.steps == 1, report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert len(llm_model.requests) == 1
    asked = "Change this code as asked: make mean() raise ValueError for an empty list."
    assert asked in llm_model.requests[0].prompt  # the task's first line, without "In calc.py lines 5-6:"
    assert not (project / ".corolla" / "sessions.db").exists()  # an agent without a store leaves none behind


def test_the_edit_first_exchange_is_no_session_of_its_own_in_the_agents_store(llm, llm_model, project):
    llm_model.queue(fenced(MEAN_FIXED))
    store = SessionStore(project)
    config = AgentConfig(max_steps=4, mode="blocks", edit_first=True)
    report = Agent(llm, project, policy=CommandPolicy(), config=config, store=store).run(
        "In calc.py lines 5-6: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.steps == 1, report.to_text()
    assert [s.kind for s in store.list()] == ["agent"]  # the user's history: the agent's run, not an extra edit
    firsts = [e for e in store.events(store.list()[0].id) if e.type == "assistant" and e.data.get("edit_first")]
    assert len(firsts) == 1 and "raise ValueError" in firsts[0].data["text"]  # the exchange is in its transcript


def test_an_edit_first_that_fails_the_tests_goes_on_in_blocks_with_their_output(llm, llm_model, project):
    wrong = 'def mean(values):\n    if not values:\n        return 0\n    return sum(values) / len(values)'
    llm_model.queue(fenced(wrong), "calc.py:5-8\n" + fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py lines 5-6: make mean() raise ValueError for an empty list.",
                        edit_first=True)
    assert report.status == "done" and report.tests["passed"] and report.steps == 2, report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    second = llm_model.requests[1].prompt
    assert "calc.py:5-6\n```python\n" + wrong in second  # the first edit, as a block for the task's lines
    assert "The tests fail." in second and "test_mean_of_empty_list_raises" in second


def test_an_edit_first_that_breaks_a_passing_test_is_undone_and_the_loop_starts_from_the_code_as_it_was(
        llm, llm_model, project):
    breaks_add = CALC_FIXED.replace("return a + b", "return a - b")  # fixes mean(), breaks add()
    llm_model.queue(fenced(breaks_add), "calc.py:5-6\n" + fenced(MEAN_FIXED))
    store = SessionStore(project)
    config = AgentConfig(max_steps=4, mode="blocks", edit_first=True)
    report = Agent(llm, project, policy=CommandPolicy(), config=config, store=store).run(
        "In calc.py: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.tests["passed"], report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED and "a - b" not in report.diff
    assert len(llm_model.requests) == 2
    second = llm_model.requests[1].prompt
    assert "a - b" not in second and "test_add" not in second  # the loop's first message, the code as it was
    events = store.events(store.list()[0].id)
    undone = [e.data for e in events if e.type == "tool_result" and e.data["name"] == "edit_first"]
    assert undone and undone[0]["data"]["undone"] == ["calc.py"], undone
    assert "tests/test_calc.py::test_add" in undone[0]["output"]
    assert [e.data.get("undo", False) for e in events if e.type == "edit"] == [False, True, False]


def test_a_first_edit_that_cannot_be_undone_is_kept_and_the_loop_goes_on_from_it(llm, llm_model, project,
                                                                                  monkeypatch):
    from corolla.assistant.agent import loop
    from corolla.assistant.errors import StaleFileError

    def stale(root, proposal):
        raise StaleFileError("calc.py was changed since")

    monkeypatch.setattr(loop, "revert", stale)
    breaks_add = CALC_FIXED.replace("return a + b", "return a - b")
    llm_model.queue(fenced(breaks_add), "calc.py:1-2\n" + fenced("def add(a, b):\n    return a + b"))
    store = SessionStore(project)
    config = AgentConfig(max_steps=4, mode="blocks", edit_first=True)
    report = Agent(llm, project, policy=CommandPolicy(), config=config, store=store).run(
        "In calc.py: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.steps == 2, report.to_text()  # repaired from the test output
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert "test_add" in llm_model.requests[1].prompt  # the loop went on from the edit's failing tests
    kept = [e.data["output"] for e in store.events(store.list()[0].id)
            if e.type == "tool_result" and e.data["name"] == "edit_first"]
    assert kept and "cannot be undone" in kept[0]


@pytest.mark.parametrize("output, exit_code, failing", [
    ("..F\n=== short test summary info ===\nFAILED tests/test_a.py::test_x - assert 1 == 2\n"
     "ERROR tests/test_b.py\n1 failed, 2 passed, 1 error in 0.1s\n", 1,
     {"tests/test_a.py::test_x", "tests/test_b.py"}),
    ("3 passed in 0.1s\n", 0, set()),
    ("FAIL: TestX.test_y\nRan 1 test\n", 1, None),  # not pytest's summary: unknown
])
def test_the_failing_tests_are_read_from_pytest_s_summary(output, exit_code, failing):
    found = failing_tests(output, exit_code)
    assert (set(found) if found is not None else None) == failing


def test_a_refused_edit_first_changes_nothing_and_the_blocks_loop_goes_on(llm, llm_model, project):
    llm_model.queue("I cannot do that.", "Still no code.", "calc.py:5-6\n" + fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py lines 5-6: make mean() raise ValueError for an empty list.",
                        edit_first=True)
    assert report.status == "done" and report.tests["passed"], report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert "Change this code as asked" not in llm_model.requests[2].prompt  # the loop's own first message


def test_a_function_only_reply_to_a_whole_file_edit_first_is_applied_as_a_block(llm, llm_model, project):
    # the edit command asked for the whole file; the model sent only the function it changed: the edit
    # refuses it (add() would go), the blocks loop's parser puts it in its place
    llm_model.queue(fenced(MEAN_FIXED), "I cannot.")
    report = blocks_run(llm, project, "In calc.py: make mean() raise ValueError for an empty list.", edit_first=True)
    assert report.status == "done" and report.tests["passed"] and report.steps == 1, report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert len(llm_model.requests) == 2 and "`add` would be removed" in llm_model.requests[1].prompt


@pytest.mark.parametrize(("task", "asked"), [
    ("In words.py lines 13-15: Make it case-insensitive.\nThe tests in t.py check it.", "Make it case-insensitive."),
    ("in `words.py`: make it faster", "make it faster"),
    ("In words.py:3-4, rename x", "rename x"),
    ("Fix words.py so that it works", "Fix words.py so that it works"),
    ("In other.py: do it", "In other.py: do it"),
])
def test_the_edit_first_is_asked_the_tasks_instruction_alone(task, asked):
    from corolla.assistant.agent.loop import _instruction

    assert _instruction(task, "words.py") == asked
