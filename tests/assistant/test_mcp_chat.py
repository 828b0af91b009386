"""MCP servers' tools in plain chat (``Assistant.respond``): a real server written with the official SDK
(tests/assistant/mcp_server.py, over stdio) and the scripted model behind corolla's real API. The model calls a
tool, the tool runs in the server's process, its result reaches the model's next request and the answer comes
back as deltas; an untrusted server's tool is refused (and never reaches the server); a server that cannot
start leaves chat working; without MCP configuration a turn is one streamed request as before. Then the same
through the service's SSE and `corolla ask` / `corolla chat`."""

from __future__ import annotations

import json

import httpx
import pytest

from corolla.api.server import serving
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.tools import ToolContext
from corolla.assistant.chat_tools import _chat_tool
from corolla.assistant.core import Assistant, AssistantConfig
from corolla.assistant.errors import EndpointError
from corolla.assistant.llm import LLM, LLMConfig
from corolla.assistant.service import create_service
from tests.assistant.test_cli_assistant import corolla
from tests.assistant.test_mcp import call, calls, pids, running, stdio_entry, wait_until, write_config

DESCRIPTION = "Add two integers."  # the add tool's description: in a prompt only when the tools are offered


@pytest.fixture()
def make(scripted, llm_model, workspace):
    """Assistants over the scripted model on the workspace; each is closed (its MCP servers stopped) after the test."""
    made: list[Assistant] = []

    def build(llm: LLM | None = None, **kw) -> Assistant:
        _, base = scripted
        a = Assistant(llm or LLM(LLMConfig(endpoint=base, model=None)), workspace, **kw)
        made.append(a)
        return a

    yield build
    for a in made:
        a.close()


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def text_of(events: list[dict]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


def tool_response(prompt: str) -> str:
    """The last tool result as the model's prompt shows it (Qwen's template)."""
    return prompt.split("<tool_response>")[-1].split("</tool_response>")[0].strip()


def test_chat_calls_a_tool_that_runs_in_the_server_and_answers_with_its_result(make, llm_model, workspace,
                                                                               tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log, trusted=True)})
    llm_model.queue(call("mcp__notes__add", a=2, b=40), "2 + 40 = 42.")
    a = make()
    events = list(a.respond("What is 2 + 40? Use the notes server.", a.state()))
    assert kinds(events) == ["session", "context", "tool_call", "tool_result", "delta", "done"], events
    tool_call, result = events[2], events[3]
    assert (tool_call["name"], tool_call["arguments"]) == ("mcp__notes__add", {"a": 2, "b": 40})
    assert tool_call["call"] == 'mcp__notes__add {"a": 2, "b": 40}' and tool_call["id"] == result["id"]
    assert (result["ok"], result["output"], result["refused"]) == (True, "42", False)
    assert text_of(events) == "2 + 40 = 42."
    assert calls(log) == ['add {"a": 2, "b": 40}']  # it ran in the server's process
    first, second = llm_model.requests[0].prompt, llm_model.requests[1].prompt
    assert len(llm_model.requests) == 2
    assert '"name": "mcp__notes__add"' in first and DESCRIPTION in first  # offered with the server's schema
    assert '"a": {"title": "A", "type": "integer"}' in first
    assert tool_response(second) == "42"  # the result reached the model
    sid = events[0]["id"]
    messages = a.store.messages(sid)
    assert [m.role for m in messages] == ["user", "tool", "assistant"]
    assert messages[1].content == 'mcp__notes__add {"a": 2, "b": 40}\n42'
    assert messages[1].meta == {"name": "mcp__notes__add", "arguments": {"a": 2, "b": 40}, "ok": True,
                                "refused": False}
    assert messages[2].content == "2 + 40 = 42."

    # the next turn reuses the running server; close() stops it
    read_todo = '<tool_call>\n{"name": "mcp__notes__read_note", "arguments": {"name": "todo"}}\n</tool_call>'
    llm_model.queue(read_todo, "The todo note says: buy milk.")
    again = list(a.respond("And the todo note?", a.state(), sid))
    assert text_of(again) == "The todo note says: buy milk." and calls(log)[-1] == 'read_note {"name": "todo"}'
    (pid,) = pids(log)
    assert running(pid)
    a.close()
    assert wait_until(lambda: not running(pid)), f"the MCP server {pid} outlived Assistant.close()"


def test_an_untrusted_servers_tool_is_refused_and_the_server_never_sees_it(make, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log)})  # not trusted, and chat has nobody to ask
    llm_model.queue(call("mcp__notes__add", a=4321, b=1), "I am not allowed to use that tool.")
    a = make()
    events = list(a.respond("Add 4321 and 1 with the notes server.", a.state()))
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert not result["ok"] and result["refused"]
    assert result["output"].startswith("mcp__notes__add refused: calling mcp__notes__add needs approval")
    assert "--auto-approve mcp__notes__add" in result["output"]
    assert "refused" in tool_response(llm_model.requests[1].prompt)  # the model reads why
    assert text_of(events) == "I am not allowed to use that tool."
    assert pids(log) and calls(log) == []  # the server runs, the call never reached it
    tool_message = a.store.messages(events[0]["id"])[1]
    assert tool_message.role == "tool" and tool_message.meta["refused"] and "needs approval" in tool_message.content


def test_auto_approved_or_approved_calls_run_a_declined_one_does_not(make, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log)})
    llm_model.queue(call("mcp__notes__add", a=1, b=2), "3.")
    auto = make(tool_policy=CommandPolicy(auto_approve=("mcp__notes",)))
    assert [e["output"] for e in auto.respond("1 + 2?", auto.state()) if e["type"] == "tool_result"] == ["3"]
    auto.close()
    asked: list[str] = []
    llm_model.queue(call("mcp__notes__add", a=555, b=1), "Declined.")
    declining = make(tool_policy=CommandPolicy(approve=lambda c: asked.append(c) or False))
    (result,) = [e for e in declining.respond("555 + 1?", declining.state()) if e["type"] == "tool_result"]
    assert asked == ['mcp__notes__add {"a": 555, "b": 1}'] and "the user declined the call" in result["output"]
    assert calls(log) == ['add {"a": 1, "b": 2}']


def test_a_server_that_cannot_start_leaves_chat_working(make, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"broken": {"command": "corolla-no-such-server"}, "notes": stdio_entry(log, trusted=True)})
    llm_model.queue(call("mcp__notes__add", a=20, b=22), "42.")
    a = make()
    events = list(a.respond("20 + 22?", a.state()))
    (warning,) = [e for e in events if e["type"] == "warning"]
    assert "MCP server 'broken' could not start" in warning["message"] and "not on PATH" in warning["message"]
    assert [e["output"] for e in events if e["type"] == "tool_result"] == ["42"] and text_of(events) == "42."
    assert [e.type for e in a.store.events(events[0]["id"])] == ["warning"]
    llm_model.queue("Still here.")
    again = list(a.respond("Anything else?", a.state(), events[0]["id"]))
    assert "warning" not in kinds(again) and text_of(again) == "Still here."  # said once


def test_only_broken_servers_chat_streams_as_without_tools(make, llm_model, workspace):
    write_config(workspace, {"broken": {"command": "corolla-no-such-server"}})
    llm_model.queue("Hello there, how can I help?")
    a = make()
    events = list(a.respond("hello", a.state()))
    assert kinds(events)[:3] == ["session", "context", "warning"] and events[-1]["type"] == "done"
    assert text_of(events) == "Hello there, how can I help?" and kinds(events).count("delta") > 1  # streamed
    assert len(llm_model.requests) == 1 and "<tools>" not in llm_model.requests[0].prompt


def test_without_mcp_configuration_a_turn_is_one_streamed_request(make, llm_model, workspace):
    llm_model.queue("Hello there, how can I help?")
    a = make()
    events = list(a.respond("hello", a.state()))
    assert kinds(events) == ["session", "context", *["delta"] * kinds(events).count("delta"), "done"]
    assert kinds(events).count("delta") > 1 and text_of(events) == "Hello there, how can I help?"
    assert len(llm_model.requests) == 1 and "<tools>" not in llm_model.requests[0].prompt
    assert a._chat_tools.hub is None  # nothing started
    assert [m.role for m in a.store.messages(events[0]["id"])] == ["user", "assistant"]


def test_slash_commands_offer_no_tools(make, llm_model, workspace, tmp_path):
    write_config(workspace, {"notes": stdio_entry(tmp_path / "calls.log", trusted=True)})
    llm_model.add("Explain", "It adds.")
    a = make()
    events = list(a.respond("/explain", a.state(current_file="calc.py", selection=(1, 2))))
    assert text_of(events) == "It adds." and len(llm_model.requests) == 1
    assert DESCRIPTION not in llm_model.requests[0].prompt and a._chat_tools.hub is None


def test_the_tool_rounds_are_capped_then_the_answer_streams_without_tools(make, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log, trusted=True)})
    llm_model.queue(*[call("mcp__notes__add", a=i, b=1) for i in range(2)], "Enough adding: the sums are 1 and 2.")
    a = make(config=AssistantConfig(tool_rounds=2))
    events = list(a.respond("Add and add.", a.state()))
    assert len(llm_model.requests) == 3 and calls(log) == ['add {"a": 0, "b": 1}', 'add {"a": 1, "b": 1}']
    assert DESCRIPTION in llm_model.requests[1].prompt and DESCRIPTION not in llm_model.requests[2].prompt
    assert text_of(events) == "Enough adding: the sums are 1 and 2." and kinds(events).count("delta") > 1


def test_bad_arguments_are_answered_here_and_never_reach_the_server(make, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log, trusted=True)})
    llm_model.queue(call("mcp__notes__add", a="seven", b=1), "Sorry.")
    a = make()
    (result,) = [e for e in a.respond("Add seven and one.", a.state()) if e["type"] == "tool_result"]
    assert not result["ok"] and "argument 'a': 'seven' is not of type 'integer'" in result["output"]
    assert calls(log) == []


def test_the_agents_own_tools_are_not_chats(workspace):
    ctx = ToolContext(root=workspace, policy=CommandPolicy(auto_approve=("mcp",)))
    result = _chat_tool(ctx, {}, "read_file", {"path": "calc.py"}, None)  # one of the agent's built-in tools
    assert not result.ok and result.output.startswith("unknown tool 'read_file'") and "def add" not in result.output


def test_a_huge_output_is_cut_before_the_model_and_the_events(make, llm_model, workspace, tmp_path):
    write_config(workspace, {"notes": stdio_entry(tmp_path / "calls.log", trusted=True)})
    llm_model.queue(call("mcp__notes__huge", chars=100_000), "It is long.")
    a = make(tool_policy=CommandPolicy(max_output_chars=2000))
    (result,) = [e for e in a.respond("Something long.", a.state()) if e["type"] == "tool_result"]
    assert result["ok"] and len(result["output"]) < 2200
    assert result["output"].startswith("HEAD-MARKER") and result["output"].endswith("TAIL-MARKER")
    assert len(tool_response(llm_model.requests[1].prompt)) < 2200


class NoToolsLLM(LLM):
    """An endpoint that answers 400 to requests with tools (as some servers do), through the real client."""

    def complete(self, messages, **overrides):
        if overrides.get("tools"):
            raise EndpointError(f"the model endpoint {self.config.endpoint} answered 400: tools are not supported")
        return super().complete(messages, **overrides)


def test_an_endpoint_without_tools_is_chat_without_them(make, scripted, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log, trusted=True)})
    _, base = scripted
    a = make(llm=NoToolsLLM(LLMConfig(endpoint=base, model=None)))
    llm_model.queue("Hello.", "Hello again.")
    events = list(a.respond("hello", a.state()))
    (warning,) = [e for e in events if e["type"] == "warning"]
    assert "refused tools" in warning["message"] and "tools are not supported" in warning["message"]
    assert text_of(events) == "Hello." and len(llm_model.requests) == 1
    again = list(a.respond("hello", a.state(), events[0]["id"]))
    assert kinds(again)[:3] == ["session", "context", "delta"] and text_of(again) == "Hello again."
    assert calls(log) == []


# --- the surfaces ---------------------------------------------------------------------------------------
def test_the_service_streams_tool_events_and_the_session_keeps_them(scripted, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log, trusted=True)})
    llm_model.queue(call("mcp__notes__add", a=2, b=40), "42.")
    _, base = scripted
    with Assistant(LLM(LLMConfig(endpoint=base)), workspace) as assistant:
        with serving(create_service(assistant), "127.0.0.1", 0) as url, httpx.Client(base_url=url, timeout=60) as c:
            sid = c.post("/sessions", json={}).json()["id"]
            with c.stream("POST", f"/sessions/{sid}/messages", json={"text": "2 + 40?"}) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
            session = c.get(f"/sessions/{sid}").json()
        (pid,) = pids(log)
    assert kinds(events) == ["session", "context", "tool_call", "tool_result", "delta", "done"]
    assert events[3]["output"] == "42" and text_of(events) == "42."
    assert [(m["role"], m["content"]) for m in session["messages"]][1:] == [
        ("tool", 'mcp__notes__add {"a": 2, "b": 40}\n42'), ("assistant", "42.")]
    assert wait_until(lambda: not running(pid))


def test_corolla_ask_and_chat_print_a_line_per_tool_call(scripted, llm_model, workspace, tmp_path):
    _, base = scripted
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log)})
    llm_model.queue(call("mcp__notes__add", a=2, b=40), "2 + 40 = 42.")
    asked = corolla(workspace, base, "ask", "What is 2 + 40?", "--auto-approve", "mcp__notes__add")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == "2 + 40 = 42."
    assert '[tool mcp__notes__add {"a": 2, "b": 40} -> 42]' in asked.stderr
    llm_model.queue(call("mcp__notes__add", a=7, b=7), "I may not call it.")
    chatted = corolla(workspace, base, "chat", "--workspace", str(workspace), stdin="add 7 and 7\n")
    assert chatted.returncode == 0, chatted.stderr
    assert '[tool mcp__notes__add {"a": 7, "b": 7}: mcp__notes__add refused: calling mcp__notes__add needs ' \
           'approval' in chatted.stderr and "I may not call it." in chatted.stdout
    assert "--auto-approve mcp__notes__add (or mcp__notes for all its tools)]" in chatted.stderr  # the whole reason
    assert calls(log) == ['add {"a": 2, "b": 40}']
    assert len(pids(log)) == 2 and wait_until(lambda: not any(running(p) for p in pids(log)))
