"""The agent's tool loop against a scripted model behind corolla's real API: native tool calls, the
prompt format, malformed calls, caps, the stop event, session events and the final report."""

from __future__ import annotations

import json
import threading

import pytest

from corolla.assistant.agent.loop import Agent, AgentConfig
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.report import AgentReport, diffstat
from corolla.assistant.agent.toolcalls import parse_arguments, parse_text_calls
from corolla.assistant.errors import EndpointError
from corolla.assistant.sessions import SessionStore

KNOWN = {"read_file", "edit", "run_tests", "list_dir"}


MEAN_OLD = "    return sum(values) / len(values)"
MEAN_NEW = ('    if not values:\n        raise ValueError("mean of an empty list")\n'
            "    return sum(values) / len(values)")


def call(name: str, **arguments) -> str:
    """A tool call as Qwen writes it (the real API turns it into a native tool call)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def agent(llm, root, **kw) -> Agent:
    config = kw.pop("config", None) or AgentConfig(mode="tools")
    return Agent(llm, root, policy=CommandPolicy(), config=config, **kw)


# --- parsing calls from text (pure) ---------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "calc.py"}}\n</tool_call>',
    '<tool_call>{"name": "read_file", "arguments": {"path": "calc.py"}}',  # no closing tag
    '<tool_call>\n```json\n{"name": "read_file", "arguments": {"path": "calc.py"}}\n```\n</tool_call>',
    '```json\n{"name": "read_file", "arguments": {"path": "calc.py"}}\n```',
    'I will read it first.\n{"name": "read_file", "arguments": {"path": "calc.py"}}',
    "<tool_call>{'name': 'read_file', 'arguments': {'path': 'calc.py'}}</tool_call>",  # python quotes
    '<tool_call>{"name": "read_file", "arguments": {"path": "calc.py",},}</tool_call>',  # trailing commas
    '<tool_call>{"name": "read_file", "arguments": "{\\"path\\": \\"calc.py\\"}"}</tool_call>',  # args as text
    '<tool_call>{"name": "read_file", "parameters": {"path": "calc.py"}}</tool_call>',
    '{"type": "function", "function": {"name": "read_file", "arguments": {"path": "calc.py"}}}',
])
def test_text_calls_are_read_tolerantly(text):
    parsed = parse_text_calls(text, KNOWN)
    assert parsed.error is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [("read_file", {"path": "calc.py"})]


def test_several_calls_and_the_prose_around_them():
    text = "Reading both.\n" + call("read_file", path="a.py") + "\n" + call("read_file", path="b.py")
    parsed = parse_text_calls(text, KNOWN)
    assert [c.arguments["path"] for c in parsed.calls] == ["a.py", "b.py"]
    assert parsed.content == "Reading both."


@pytest.mark.parametrize("text, reason", [
    ('<tool_call>\n{"name": "read_file", "arguments": {"path": ', "not valid JSON"),
    ('<tool_call>{"name": "readfile", "arguments": {}}</tool_call>', "unknown tool 'readfile'"),
    ('<tool_call>{"arguments": {"path": "x"}}</tool_call>', 'no "name"'),
    ('<tool_call></tool_call>', "empty"),
    ('{"name": "read_file", "arguments": {"path": "calc.py"}', "not a complete JSON object"),
    ('{"name": "delete_everything", "arguments": {}}', "unknown tool"),
])
def test_unreadable_calls_come_with_a_reason(text, reason):
    parsed = parse_text_calls(text, KNOWN)
    assert parsed.calls == [] and reason in parsed.error


@pytest.mark.parametrize("text", [
    "Done: mean() now raises ValueError on an empty list.",
    'The config is ```json\n{"name": "proj", "version": 1}\n```',  # JSON that is not a call
    "",
])
def test_a_reply_without_a_call_is_a_final_answer(text):
    parsed = parse_text_calls(text, KNOWN)
    assert parsed.calls == [] and parsed.error is None


def test_native_arguments():
    assert parse_arguments('{"path": "a"}') == ({"path": "a"}, None)
    assert parse_arguments("") == ({}, None)
    assert parse_arguments("[1]")[0] is None


# --- the report (pure) -----------------------------------------------------------------------------
def test_report_text_says_what_changed_ran_and_is_left():
    diff = "--- a/calc.py\n+++ b/calc.py\n@@ -1 +1,2 @@\n-x\n+y\n+z\n"
    report = AgentReport("step_cap", "Partly done.", ["calc.py"],
                         [{"command": "python -m pytest -q", "exit_code": 1, "timed_out": False},
                          {"command": "curl http://example.com", "exit_code": None, "refused": True}],
                         20, {"command": "python -m pytest -q", "exit_code": 1, "passed": False}, diff)
    text = report.to_text()
    assert diffstat(diff) == [("calc.py", 2, 1)]
    assert "calc.py | +2 -1" in text
    assert "python -m pytest -q  -> exit 1" in text and "curl http://example.com  -> refused" in text
    assert "Tests: FAIL" in text
    assert "step cap" in text and "the tests fail" in text and "refused commands" in text


# --- the loop against the scripted model ----------------------------------------------------------
def test_a_task_that_reads_edits_and_runs_tests_ends_green(llm, llm_model, project):
    llm_model.queue(call("read_file", path="calc.py"),
                    call("edit", path="calc.py", search=MEAN_OLD, replace=MEAN_NEW),
                    call("run_tests"),
                    "mean() now raises ValueError for an empty list; the tests pass.")
    report = agent(llm, project).run("Make mean() raise ValueError for an empty list.")
    assert report.status == "done", report.to_text()
    assert report.summary.startswith("mean() now raises")
    assert report.changed_files == ["calc.py"]
    assert 'raise ValueError("mean of an empty list")' in (project / "calc.py").read_text()
    assert report.tests["passed"] and report.tests["exit_code"] == 0 and not report.tests.get("stale")
    assert [c["exit_code"] for c in report.commands] == [0]
    assert report.steps == 4
    text = report.to_text()
    assert "calc.py | +2 -0" in text and "Tests: pass" in text and "Left: nothing" in text
    first, second = llm_model.requests[0].prompt, llm_model.requests[1].prompt
    assert '"name": "edit"' in first  # the tools went natively through the chat template
    assert "def mean(values)" in second.split("<tool_response>")[-1]  # the tool result came back


def test_malformed_calls_are_sent_back_then_given_up(llm, llm_model, project):
    broken = '<tool_call>\n{"name": "read_file", "arguments": {"path": \n</tool_call>'
    llm_model.add(lambda prompt: True, broken)
    report = agent(llm, project).run("Read calc.py.")
    assert report.status == "error" and report.steps == 3  # the first try and two retries
    assert "3 unreadable tool calls in a row" in report.error and "not valid JSON" in report.error
    assert "could not be read" in llm_model.requests[1].last_message
    assert "unreadable tool calls" in report.to_text()


def test_a_malformed_call_then_a_good_one_goes_on(llm, llm_model, project):
    llm_model.queue('<tool_call>{"name": "readfile", "arguments": {"path": "calc.py"}}</tool_call>',
                    call("read_file", path="calc.py"), "It has add and mean.")
    report = agent(llm, project).run("What is in calc.py?")
    assert report.status == "done" and report.steps == 3
    assert "unknown tool 'readfile'" in llm_model.requests[1].last_message


def test_step_cap(llm, llm_model, project):
    llm_model.add(lambda prompt: True, call("list_dir", path="."))
    report = agent(llm, project, config=AgentConfig(max_steps=3, mode="tools")).run("Look around forever.")
    assert report.status == "step_cap" and report.steps == 3 and len(llm_model.requests) == 3
    assert "step cap was reached after 3 model replies" in report.to_text()


def test_time_cap_with_an_injected_clock(llm, llm_model, project):
    now = [0.0]

    def slow_reply(prompt: str) -> str:  # each reply takes 100 s on the injected clock
        now[0] += 100
        return call("list_dir", path=".")

    llm_model.add(lambda prompt: True, slow_reply)
    config = AgentConfig(max_wall_s=150, mode="tools")
    report = agent(llm, project, config=config, clock=lambda: now[0]).run("Look around.")
    assert report.status == "time_cap" and report.steps == 2
    assert "time cap" in report.to_text() and "200 s spent" in report.error


def test_the_stop_event_ends_the_run(llm, llm_model, project):
    stop = threading.Event()

    def reply_then_stop(prompt: str) -> str:
        stop.set()
        return call("list_dir", path=".")

    llm_model.add(lambda prompt: True, reply_then_stop)
    report = agent(llm, project, stop=stop).run("Look around.")
    assert report.status == "stopped" and report.steps == 1
    assert "stopped on request" in report.to_text()


def test_prompt_format_mode_parses_calls_from_text(llm, llm_model, project):
    llm_model.queue('```json\n{"name": "read_file", "arguments": {"path": "calc.py"}}\n```',
                    "Let me fix it.\n<tool_call>{'name': 'edit', 'arguments': {'path': 'calc.py', 'search': "
                    + json.dumps(MEAN_OLD) + ", 'replace': " + json.dumps(MEAN_NEW) + "}}</tool_call>",
                    "Done.")
    report = agent(llm, project, config=AgentConfig(native_tools=False, mode="tools")).run("Make mean() raise on [].")
    assert report.status == "done" and report.changed_files == ["calc.py"], report.to_text()
    first = llm_model.requests[0].prompt
    assert "To call a tool, reply with one call" in first and "- edit(path, search, replace)" in first
    assert "<tools>" not in first  # nothing native
    assert llm_model.requests[1].last_message.startswith("Result of read_file:")
    assert "Result of edit:" in llm_model.requests[2].last_message


class NoToolsLLM:
    """An endpoint that answers 400 to requests with tools (some llama.cpp/vLLM setups)."""

    def __init__(self, llm):
        self.llm, self.with_tools = llm, 0

    def complete(self, messages, **kw):
        if kw.get("tools"):
            self.with_tools += 1
            raise EndpointError("the model endpoint answered 400: tools are not supported")
        return self.llm.complete(messages, **kw)


def test_an_endpoint_without_tools_falls_back_to_the_prompt_format(llm, llm_model, project):
    llm_model.queue(call("read_file", path="calc.py"), "It has add and mean.")
    store = SessionStore(project)
    wrapped = NoToolsLLM(llm)
    a = agent(wrapped, project, store=store)
    report = a.run("What is in calc.py?")
    assert report.status == "done" and wrapped.with_tools == 1 and report.steps == 2
    assert "To call a tool, reply with one call" in llm_model.requests[0].prompt
    assert any(e.type == "mode" and e.data["native_tools"] is False for e in store.events(a.session_id))


def test_native_tools_required_does_not_fall_back(llm, project):
    report = agent(NoToolsLLM(llm), project, config=AgentConfig(native_tools=True, mode="tools")).run("Read calc.py.")
    assert report.status == "error" and "tools are not supported" in report.error


def test_every_step_is_a_session_event_that_survives_a_restart(llm, llm_model, project):
    llm_model.queue(call("edit", path="calc.py", search=MEAN_OLD, replace=MEAN_NEW), call("run_tests"), "Done.")
    store = SessionStore(project)
    a = agent(llm, project, store=store)
    report = a.run("Make mean() raise on [].")
    assert report.session_id == a.session_id and store.get(a.session_id).kind == "agent"
    reopened = SessionStore(project).events(a.session_id)  # a new store: as after a restart
    assert [e.type for e in reopened] == ["task", "assistant", "tool_call", "tool_result", "edit", "assistant",
                                          "tool_call", "tool_result", "assistant", "report"]
    assert [e.seq for e in reopened] == list(range(1, 11))
    assert reopened[0].data["task"] == "Make mean() raise on []."
    assert reopened[2].data == {"name": "edit", "arguments": {"path": "calc.py", "search": MEAN_OLD,
                                                               "replace": MEAN_NEW}}
    assert reopened[4].data["files"] == ["calc.py"] and "+    if not values:" in reopened[4].data["diff"]
    assert reopened[7].data["ok"] is True
    assert reopened[-1].data["status"] == "done" and reopened[-1].data["changed_files"] == ["calc.py"]
