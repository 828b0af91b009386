"""The assistant's turns, commands and edits against a scripted model behind the real HTTP API."""

from __future__ import annotations

import threading

import pytest

from corolla.assistant.core import Assistant
from corolla.assistant.errors import AssistantError, EditError, EndpointError, PlaceholderError, UnknownCommandError
from corolla.assistant.llm import LLM, LLMConfig
from tests.assistant.conftest import CALC, git
from tests.assistant.scripted import last_message

MEAN_FIXED = '''```python
def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)
```'''


def events_of(assistant, text, state, session_id=None):
    events = list(assistant.respond(text, state, session_id))
    return {e["type"]: e for e in events}, events


def test_chat_streams_stores_and_sends_context(assistant, llm_model):
    llm_model.add("what does", "It adds and averages numbers.")
    state = assistant.state(current_file="calc.py", cursor_line=5)
    seen, events = events_of(assistant, "what does this file do?", state)
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "It adds and averages numbers."
    assert [e["type"] for e in events][:2] == ["session", "context"]
    assert any(p["label"].startswith("calc.py") for p in seen["context"]["parts"])
    prompt = llm_model.requests[-1].prompt
    assert "Explain things for a beginner" in prompt  # AGENTS.md reached the system prompt
    assert "def mean(values)" in prompt
    session_id = seen["done"]["session_id"]
    messages = assistant.store.messages(session_id)
    assert [(m.role, m.content) for m in messages] == [("user", "what does this file do?"),
                                                       ("assistant", "It adds and averages numbers.")]
    assert messages[0].context  # what was sent is kept with the message


def test_history_is_sent_on_the_next_turn_of_the_same_session_only(assistant, llm_model):
    llm_model.add("first", "ONE").add("second", "TWO").add("other", "THREE")
    state = assistant.state()
    seen, _ = events_of(assistant, "first question", state)
    sid = seen["done"]["session_id"]
    events_of(assistant, "other session", state)  # a second session in between
    events_of(assistant, "second question", state, sid)
    prompt = llm_model.requests[-1].prompt
    assert "first question" in prompt and "ONE" in prompt and "other session" not in prompt


def test_explain_sends_the_selected_lines_and_the_instructions(assistant, llm_model):
    llm_model.add("Explain", "mean divides the sum by the count.")
    state = assistant.state(current_file="calc.py", selection=(5, 6))
    seen, events = events_of(assistant, "/explain", state)
    prompt = llm_model.requests[-1].prompt
    assert "calc.py (lines 5-6)" in prompt and "return sum(values) / len(values)" in prompt
    assert "for a beginner" in prompt
    assert "edit" not in seen and "edit_error" not in seen


def test_fix_proposes_accepts_and_undoes(assistant, llm_model, workspace):
    llm_model.add("Fix", "Guard the empty list:\n" + MEAN_FIXED)
    state = assistant.state(current_file="calc.py", selection=(5, 6),
                            diagnostics=("calc.py:6: ZeroDivisionError: division by zero",))
    seen, _ = events_of(assistant, "/fix mean([]) crashes", state)
    assert "ZeroDivisionError" in llm_model.requests[-1].prompt
    edit = seen["edit"]
    assert "+        raise ValueError" in edit["diff"] and edit["files"] == ["calc.py"]
    assert (workspace / "calc.py").read_text() == CALC  # proposed, not applied
    assistant.accept(edit["edit_id"])
    fixed = (workspace / "calc.py").read_text()
    assert "raise ValueError" in fixed and fixed.startswith("def add(a, b):")
    compile(fixed, "calc.py", "exec")
    with pytest.raises(AssistantError, match="accepted"):
        assistant.accept(edit["edit_id"])
    undone, _ = assistant.undo(seen["done"]["session_id"])
    assert undone == edit["edit_id"] and (workspace / "calc.py").read_text() == CALC
    assert assistant.store.get_edit(edit["edit_id"]).status == "undone"


def test_reject_changes_nothing(assistant, llm_model, workspace):
    llm_model.add("docstrings", MEAN_FIXED)
    seen, _ = events_of(assistant, "/doc", assistant.state(current_file="calc.py", selection=(5, 6)))
    assistant.reject(seen["edit"]["edit_id"])
    assert (workspace / "calc.py").read_text() == CALC
    assert assistant.store.get_edit(seen["edit"]["edit_id"]).status == "rejected"
    with pytest.raises(AssistantError, match="no accepted edit"):
        assistant.undo()


def test_a_placeholder_reply_is_refused_and_nothing_is_written(assistant, llm_model, workspace):
    llm_model.add("docstrings", "```python\ndef add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\n"
                                "# ... existing code ...\n```")
    seen, _ = events_of(assistant, "/doc", assistant.state(current_file="calc.py"))
    assert "edit" not in seen and seen["edit_error"]["error"]["type"] == "PlaceholderError"
    assert (workspace / "calc.py").read_text() == CALC


def test_tests_command_writes_a_new_test_file_in_the_projects_framework(assistant, llm_model, workspace):
    llm_model.add("unit tests", "```python\nfrom calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n```")
    seen, _ = events_of(assistant, "/tests", assistant.state(current_file="calc.py"))
    assert "pytest" in llm_model.requests[-1].prompt  # detected from pyproject.toml
    assert seen["edit"]["files"] == ["tests/test_calc.py"]
    assistant.accept(seen["edit"]["edit_id"])
    assert "def test_add" in (workspace / "tests" / "test_calc.py").read_text()
    # asked again, the new tests are added after the existing ones, never replacing them
    llm_model.reset()
    llm_model.add("unit tests",
                  "```python\nfrom calc import mean\n\n\ndef test_mean():\n    assert mean([2]) == 2\n```")
    seen, _ = events_of(assistant, "/tests", assistant.state(current_file="calc.py"))
    assistant.accept(seen["edit"]["edit_id"])
    text = (workspace / "tests" / "test_calc.py").read_text()
    assert "def test_add" in text and "def test_mean" in text


def test_propose_edit_retries_once_with_the_reason(assistant, llm_model, workspace):
    llm_model.queue("I would add a check.", MEAN_FIXED)  # no code block, then a good one
    outcome = assistant.propose_edit("raise ValueError on an empty list",
                                     assistant.state(current_file="calc.py", selection=(5, 6)))
    assert "could not be applied" in llm_model.requests[-1].prompt
    assert "raise ValueError" in outcome.proposal.diff
    assert (workspace / "calc.py").read_text() == CALC


def test_propose_edit_gives_up_with_a_clear_error(assistant, llm_model, workspace):
    llm_model.queue("no code here", "still no code")
    with pytest.raises(EditError):
        assistant.propose_edit("do it", assistant.state(current_file="calc.py", selection=(5, 6)))
    assert (workspace / "calc.py").read_text() == CALC
    session = assistant.store.list()[0]
    assert assistant.store.messages(session.id)[-1].content.startswith("edit refused:")


def test_commit_message_from_the_staged_diff_in_the_projects_style(assistant, llm_model, workspace):
    (workspace / "calc.py").write_text(CALC + "\n\ndef double(x):\n    return 2 * x\n")
    git(workspace, "add", "calc.py")
    llm_model.add("commit message", "```\nAdd double()\n```")
    seen, _ = events_of(assistant, "/commit", assistant.state())
    prompt = llm_model.requests[-1].prompt
    assert "+def double(x):" in prompt and "- Add calc" in prompt  # the diff and the recent subjects
    assert seen["commit_message"]["text"] == "Add double()"


def test_review_and_git_errors(assistant, llm_model, workspace):
    with pytest.raises(AssistantError, match="nothing is staged"):
        list(assistant.respond("/commit", assistant.state()))
    with pytest.raises(AssistantError, match="nothing to review"):
        list(assistant.respond("/review", assistant.state()))
    (workspace / "calc.py").write_text(CALC.replace("a + b", "a - b"))
    llm_model.add("is a bug", "line 2: BUG: add subtracts")
    seen, events = events_of(assistant, "/review unstaged", assistant.state())
    assert "-    return a + b" in llm_model.requests[-1].prompt
    assert "subtracts" in "".join(e["text"] for e in events if e["type"] == "delta")


def test_bad_requests_are_typed_errors(assistant, llm_model, workspace):
    with pytest.raises(UnknownCommandError, match="/explain"):
        list(assistant.respond("/frobnicate", assistant.state()))
    with pytest.raises(AssistantError, match="needs a file"):
        list(assistant.respond("/fix", assistant.state()))
    with pytest.raises(AssistantError, match="outside"):
        list(assistant.respond("/explain", assistant.state(current_file="calc.py", selection=(40, 50))))
    dead = Assistant(LLM(LLMConfig(endpoint="http://127.0.0.1:9/v1", model="m", timeout_s=5)), workspace)
    with pytest.raises(EndpointError, match="cannot reach"):
        list(dead.respond("hi", dead.state()))


def test_sessions_run_at_once_without_mixing(assistant, llm_model):
    llm_model.add(lambda prompt: True, lambda prompt: "echo " + last_message(prompt).strip()[-13:])
    results: dict[int, list[str]] = {}

    def talk(i):
        sid = assistant.store.create(title=f"s{i}").id
        for turn in range(3):
            list(assistant.respond(f"thread{i} turn{turn}", assistant.state(), sid))
        results[i] = [m.content for m in assistant.store.messages(sid)]

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(3):
        users = [c for c in results[i][::2]]
        assert users == [f"thread{i} turn{t}" for t in range(3)]
        assert all(f"thread{i}" in c for c in results[i][1::2])


def test_state_survives_a_restart(assistant, llm_model, workspace, scripted):
    llm_model.add("Fix", MEAN_FIXED)
    seen, _ = events_of(assistant, "/fix", assistant.state(current_file="calc.py", selection=(5, 6)))
    assistant.accept(seen["edit"]["edit_id"])
    _, base = scripted
    again = Assistant(LLM(LLMConfig(endpoint=base)), workspace)  # a new process would see the same
    assert [s.id for s in again.store.list()] == [seen["done"]["session_id"]]
    assert len(again.store.messages(seen["done"]["session_id"])) == 2
    again.undo()
    assert (workspace / "calc.py").read_text() == CALC


def test_placeholder_error_class_is_an_edit_error():
    assert issubclass(PlaceholderError, EditError)
