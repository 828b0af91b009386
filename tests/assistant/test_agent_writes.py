"""Code blocks as the agent's edits (:mod:`corolla.assistant.agent.writes`): which file a block is for,
whole files and whole definitions, refusals with a reason; and in the loop against the scripted model."""

from __future__ import annotations

import pytest

from corolla.assistant.agent.loop import Agent, AgentConfig
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.writes import WriteError, default_file, find_writes, mentioned_files
from corolla.assistant.edits import propose
from tests.assistant.conftest import CALC
from tests.assistant.test_agent_loop import call

MEAN_FIXED = '''def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)'''
CALC_FIXED = CALC.replace("def mean(values):\n    return sum(values) / len(values)", MEAN_FIXED)

JS = '''function slugify(text) {
  return text.toLowerCase().split(" ").join("-");
}

function last(items) {
  return items[items.length - 1];
}
'''


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


def applied(root, writes) -> dict[str, str]:
    """What the files would become (proposed, not written)."""
    return {c.path: c.after for c in propose(root, [w.edit for w in writes]).changes}


# --- which file ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("heading", ["calc.py", "**calc.py**", "`calc.py`", "# File: calc.py", "calc.py:",
                                     "Here is the new calc.py:\n"])
def test_the_path_on_the_line_before_the_block(workspace, heading):
    reply = f"{heading}\n{fenced(CALC_FIXED.rstrip())}\nThat raises on an empty list."
    writes = find_writes(reply, workspace, [])
    assert [w.edit.path for w in writes] == ["calc.py"] and writes[0].how == "whole file"
    assert applied(workspace, writes) == {"calc.py": CALC_FIXED}


def test_a_dunder_file_named_before_the_block(workspace):
    (workspace / "pkg").mkdir()
    (workspace / "pkg" / "__init__.py").write_text("def version():\n    return 1\n")
    block = fenced("def version():\n    return 2")
    for heading in ("pkg/__init__.py", "**pkg/__init__.py**"):
        writes = find_writes(f"{heading}\n{block}", workspace, [])
        assert applied(workspace, writes) == {"pkg/__init__.py": "def version():\n    return 2\n"}


def test_the_path_in_the_info_string(workspace):
    writes = find_writes(f"```python calc.py\n{CALC_FIXED}```", workspace, [])
    assert applied(workspace, writes) == {"calc.py": CALC_FIXED}


def test_an_unnamed_block_goes_to_the_one_file_of_the_run(workspace):
    reply = "Sure:\n\n" + fenced(MEAN_FIXED)
    assert find_writes(reply, workspace, []) == []  # no file to give it to: just an answer with code
    writes = find_writes(reply, workspace, ["calc.py", "tests/test_calc.py"])  # the test file is left out
    assert applied(workspace, writes) == {"calc.py": CALC_FIXED}
    assert default_file(["calc.py", "util.py"]) is None


def test_files_named_in_a_task(workspace):
    assert mentioned_files(workspace, "In calc.py lines 5-6: fix mean. See ./calc.py, not nothere.py.") == ["calc.py"]


def test_a_block_for_a_file_that_does_not_exist_is_no_edit(workspace):
    assert find_writes("new.py\n" + fenced("print(1)"), workspace, []) == []


def test_an_unclosed_block_is_no_edit(workspace):
    assert find_writes("calc.py\n```python\ndef mean(values):\n", workspace, ["calc.py"]) == []


# --- whole files and whole definitions -----------------------------------------------------------------
def test_a_definition_replaces_the_one_in_the_file(workspace):
    writes = find_writes("calc.py\n" + fenced(MEAN_FIXED), workspace, [])
    assert writes[0].how == "lines 5-6"
    assert applied(workspace, writes) == {"calc.py": CALC_FIXED}


def test_a_first_definition_keeps_the_rest_of_the_file(workspace):
    add_doc = 'def add(a, b):\n    """Return a + b."""\n    return a + b'
    writes = find_writes("calc.py\n" + fenced(add_doc), workspace, [])
    assert applied(workspace, writes) == {"calc.py": CALC.replace("def add(a, b):\n    return a + b", add_doc)}


def test_a_javascript_function_with_its_closing_brace(workspace):
    (workspace / "slug.js").write_text(JS)
    new = 'function slugify(text, sep = "-") {\n  return text.toLowerCase().split(" ").join(sep);\n}'
    writes = find_writes("slug.js\n" + fenced(new, "javascript").replace('function slugify(text, sep = "-") {',
                                                                          "function slugify(text) {"), workspace, [])
    assert writes[0].how == "lines 1-3"
    after = applied(workspace, writes)["slug.js"]
    assert after.count("function slugify") == 1 and after.endswith("function last(items) {\n"
                                                                   "  return items[items.length - 1];\n}\n")


def test_a_fragment_that_starts_nowhere_in_the_file_is_refused(workspace):
    with pytest.raises(WriteError, match="is not a line of calc.py"):
        find_writes("calc.py\n" + fenced("def median(values):\n    return sorted(values)[len(values) // 2]"),
                    workspace, [])


def test_an_ambiguous_first_line_is_refused(workspace):
    (workspace / "calc.py").write_text(CALC + "\n\nclass A:\n    def mean(values):\n        return 0\n")
    with pytest.raises(WriteError, match="occurs 2 times"):
        find_writes("calc.py\n" + fenced("    def mean(values):\n        return 1"), workspace, [])


def test_two_blocks_for_one_file_are_refused(workspace):
    with pytest.raises(WriteError, match="two code blocks for calc.py"):
        find_writes("calc.py\n" + fenced(MEAN_FIXED) + "\ncalc.py\n" + fenced(CALC_FIXED), workspace, [])


# --- in the loop ----------------------------------------------------------------------------------------
def run(llm, root, task: str, steps: int = 8):
    return Agent(llm, root, policy=CommandPolicy(), config=AgentConfig(max_steps=steps, mode="tools")).run(task)


def test_a_code_block_is_applied_then_the_tests_run_green(llm, llm_model, project):
    llm_model.queue(call("read_file", path="calc.py"), "calc.py\n" + fenced(MEAN_FIXED), call("run_tests"),
                    "mean() raises ValueError on an empty list now.")
    report = run(llm, project, "Make mean() raise ValueError for an empty list.")
    assert report.status == "done", report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert report.changed_files == ["calc.py"] and report.tests["passed"] and not report.tests.get("stale")
    assert report.steps == 4
    after_write = llm_model.requests[2].prompt
    assert "Result of write:\nwrite: changed calc.py" in after_write and "run_tests" in after_write.split(
        "Result of write")[-1]


def test_an_unnamed_block_edits_the_file_the_agent_read(llm, llm_model, project):
    llm_model.queue(call("read_file", path="calc.py"), fenced(MEAN_FIXED), "Done.")
    report = run(llm, project, "Make mean() raise ValueError for an empty list.")
    assert report.status == "done" and (project / "calc.py").read_text() == CALC_FIXED


def test_a_refused_block_goes_back_with_the_reason_and_the_file_stays(llm, llm_model, project):
    llm_model.queue("calc.py\n" + fenced("def mean(values):\n    ...  # existing code"),
                    "calc.py\n"
                    + fenced("def mean(values):\n    if not values\n        raise ValueError\n    return 0"),
                    "I could not do it.")
    report = run(llm, project, "Make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.changed_files == []
    assert (project / "calc.py").read_text() == CALC
    second, third = llm_model.requests[1].prompt, llm_model.requests[2].prompt
    assert "Result of write (failed):" in second and "Send the code again" in second
    assert "placeholder" in second.split("Result of write (failed):")[-1]
    assert "parse" in third.split("Result of write (failed):")[-1]  # the syntax guard's reason


def test_a_block_with_the_code_already_there_is_a_final_answer(llm, llm_model, project):
    llm_model.queue("Nothing to change, calc.py already has it:\n\ncalc.py\n" + fenced(CALC.rstrip()))
    report = run(llm, project, "Check mean() in calc.py.")
    assert report.status == "done" and report.steps == 1 and report.changed_files == []


def test_a_definition_in_a_small_file_keeps_the_lines_around_it(workspace):
    (workspace / "tool.py").write_text("import os\n\n\ndef f():\n    return 1\n")
    writes = find_writes("tool.py\n" + fenced("def f():\n    return os.sep"), workspace, [])
    assert writes[0].how == "lines 4-5"
    assert applied(workspace, writes) == {"tool.py": "import os\n\n\ndef f():\n    return os.sep\n"}


def test_the_whole_file_sent_back_from_its_first_line_is_the_whole_file(workspace):
    writes = find_writes("calc.py\n" + fenced(CALC_FIXED.rstrip()), workspace, [])
    assert writes[0].how == "whole file" and applied(workspace, writes) == {"calc.py": CALC_FIXED}


def test_the_whole_file_with_a_changed_function_after_a_module_docstring(workspace):
    (workspace / "grades.py").write_text('"""Grades."""\n\nPASS = 50\n\n\ndef average(xs):\n    """Mean."""\n'
                                         '    return sum(xs) / len(xs)\n\n\ndef passed(xs):\n'
                                         '    return [x for x in xs if x >= PASS]\n')
    new = ('"""Grades."""\n\nPASS = 50\n\n\ndef average(xs):\n    """Mean; 0.0 when empty."""\n'
           '    return sum(xs) / len(xs) if xs else 0.0\n\n\n'
           'def passed(xs):\n    return [x for x in xs if x >= PASS]\n')
    writes = find_writes("grades.py\n" + fenced(new.rstrip()), workspace, [])
    assert writes[0].how == "whole file" and applied(workspace, writes) == {"grades.py": new}


# --- blocks mode (small models): the named files up front, code blocks, the tests after each change ---------
MEAN_WRONG = 'def mean(values):\n    if not values:\n        return 0\n    return sum(values) / len(values)'


def blocks_run(llm, root, task: str, mode: str = "blocks", steps: int = 6, events: list | None = None):
    config = AgentConfig(max_steps=steps, mode=mode, edit_first=False)  # the blocks loop itself
    on_event = (lambda t, d: events.append((t, d))) if events is not None else None
    return Agent(llm, root, policy=CommandPolicy(), config=config, on_event=on_event).run(task)


def test_blocks_mode_shows_the_file_applies_the_block_and_ends_when_the_tests_pass(llm, llm_model, project):
    llm_model.queue(fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.steps == 1, report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert report.tests["passed"] and report.summary == "The tests pass."
    first = llm_model.requests[0].prompt
    assert "calc.py\n```python\n" + CALC.rstrip() + "\n```" in first  # the file was in the first message
    assert '"name": "edit"' not in first and "<tools>" not in first  # no tools offered to the model


def test_blocks_mode_sends_the_failing_tests_back(llm, llm_model, project):
    llm_model.queue(fenced(MEAN_WRONG), "calc.py\n" + fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.steps == 2 and report.tests["passed"], report.to_text()
    assert (project / "calc.py").read_text() == CALC_FIXED
    second = llm_model.requests[1].prompt.split("<|im_start|>user")[-1]
    assert "Result of run_tests (failed):" in second and "test_mean_of_empty_list_raises" in second
    assert "The tests fail." in second
    assert [c["exit_code"] for c in report.commands] == [1, 0]


def test_blocks_mode_the_same_code_again_is_not_an_answer_while_the_tests_fail(llm, llm_model, project):
    llm_model.queue("calc.py\n" + fenced(CALC.rstrip()), "calc.py\n" + fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.steps == 2 and report.tests["passed"]
    assert "nothing changed" in llm_model.requests[1].prompt


def test_blocks_mode_still_runs_tool_calls_written_as_text(llm, llm_model, project):
    llm_model.queue(call("read_file", path="tests/test_calc.py"), fenced(MEAN_FIXED))
    report = blocks_run(llm, project, "In calc.py: make mean() raise ValueError for an empty list.")
    assert report.status == "done" and report.steps == 2 and report.tests["passed"]
    assert "Result of read_file:" in llm_model.requests[1].prompt


def test_auto_mode_picks_blocks_when_the_task_names_a_file(llm, llm_model, project):
    events: list = []
    llm_model.queue("Nothing to do.", "Nothing to do.")
    blocks_run(llm, project, "Look at calc.py.", mode="auto", events=events)
    blocks_run(llm, project, "Look around the project.", mode="auto", events=events)
    assert [d["mode"] for t, d in events if t == "task"] == ["blocks", "tools"]
    with pytest.raises(Exception, match="unknown agent mode"):
        blocks_run(llm, project, "x", mode="fast")
