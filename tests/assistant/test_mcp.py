"""MCP servers' tools in the agent, against a real server written with the official SDK (tests/assistant/mcp_server.py)
over stdio and streamable HTTP: the configuration (pure), listing with schemas, calls, the approval policy, the
output cap, timeouts, a server that dies mid-call, the agent's loop over the scripted model, no process left
behind, and `corolla mcp list`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from corolla.assistant.agent.loop import Agent, AgentConfig
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.schema import check_args_jsonschema
from corolla.assistant.agent.tools import Tool, ToolContext, run_tool
from corolla.assistant.mcp.config import OWN_FILE, load_config, strip_jsonc
from corolla.assistant.mcp.errors import MCPCallError, MCPConfigError, MCPServerGoneError, MCPTimeoutError
from corolla.assistant.mcp.hub import MCPHub, MCPOptions, qualified_name
from corolla.assistant.mcp.tools import agent_tools, call_tool
from corolla.assistant.sessions import SessionStore

SERVER = Path(__file__).with_name("mcp_server.py")
TOOLS = ["add", "read_note", "slow", "huge", "fail", "workdir", "crash"]


# --- helpers ------------------------------------------------------------------------------------------
def stdio_entry(log: Path, **extra) -> dict:
    return {"command": sys.executable, "args": [str(SERVER)], "env": {"MCP_TEST_LOG": str(log)}, **extra}


def write_config(root: Path, servers: dict, file: str = OWN_FILE, key: str = "servers") -> Path:
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: servers}, indent=2))
    return path


def calls(log: Path) -> list[str]:
    return [line[5:] for line in _lines(log) if line.startswith("call ")]


def pids(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in _lines(log) if line.startswith("start ")]


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def call(name: str, **arguments) -> str:
    """A tool call as Qwen writes it (the real API turns it into a native tool call)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@pytest.fixture(scope="module")
def notes_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "calls.log"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, notes_log):
    """One stdio server for the tests that do not kill it (a server takes a second or two to start)."""
    root = tmp_path_factory.mktemp("hub")
    write_config(root, {"notes": stdio_entry(notes_log)})
    with MCPHub.from_workspace(root) as h:
        statuses = h.start()
        assert [s.state for s in statuses] == ["ready"], statuses
        yield h
    assert not any(running(pid) for pid in pids(notes_log))


@pytest.fixture()
def http_server():
    """tests/assistant/mcp_server.py over streamable HTTP on 127.0.0.1 (its own process group): its URL."""
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        ready = lines.get(timeout=60)
        assert ready.startswith("READY "), ready
        yield ready.split()[1]
    finally:
        with_group(proc, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with_group(proc, signal.SIGKILL)
            proc.wait(10)


def with_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


# --- configuration (pure) -----------------------------------------------------------------------------
def test_both_files_vscode_format_jsonc_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_TEST_TOKEN", "s3cret")
    (tmp_path / ".corolla").mkdir()
    (tmp_path / ".corolla/mcp.json").write_text("""{
      // the user's own servers
      "servers": {
        "notes": {"type": "stdio", "command": "python", "args": ["${workspaceFolder}/srv.py", 3,],
                  "env": {"TOKEN": "${env:MCP_TEST_TOKEN}"}, "trusted": true, "timeout_s": 5},
        /* an http one */
        "web": {"url": "http://127.0.0.1:8931/mcp", "headers": {"Authorization": "Bearer ${env:MCP_TEST_TOKEN}"}},
      },
    }""")
    write_config(tmp_path, {"notes": {"command": "other"}, "repo": {"command": "node", "args": ["s.js"],
                                                                     "cwd": "tools", "trusted": True},
                            "off": {"command": "x", "disabled": True}}, file=".vscode/mcp.json")
    worktree = tmp_path / "wt"
    config = load_config(tmp_path, workspace=worktree)
    assert config.files == (".corolla/mcp.json", ".vscode/mcp.json") and config.problems == ()
    notes, web, repo = config.servers
    assert (notes.name, notes.transport, notes.command) == ("notes", "stdio", "python")  # .corolla wins
    assert notes.args == (f"{worktree}/srv.py", "3") and notes.env == {"TOKEN": "s3cret"}
    assert notes.cwd == worktree and notes.trusted and notes.timeout_s == 5.0
    assert (web.transport, web.url, web.headers) == ("http", "http://127.0.0.1:8931/mcp",
                                                     {"Authorization": "Bearer s3cret"})
    assert repo.cwd == worktree / "tools" and repo.source == ".vscode/mcp.json"
    assert not repo.trusted and "ignored in .vscode/mcp.json" in repo.notes[0]  # a repository cannot trust itself
    assert [d.name for d in config.disabled] == ["off"]


def test_claude_style_mcp_servers_key(tmp_path):
    write_config(tmp_path, {"fs": {"command": "npx", "args": ["-y", "server"]}}, key="mcpServers")
    assert [s.target() for s in load_config(tmp_path).servers] == ["npx -y server"]


@pytest.mark.parametrize("entry, says", [
    ({"type": "sse", "url": "http://127.0.0.1:1/sse"}, "SSE transport is not supported"),
    ({"type": "websocket", "url": "ws://x"}, "unknown \"type\" 'websocket'"),
    ({}, "needs \"command\" (a stdio server) or \"url\""),
    ({"command": "a", "url": "http://127.0.0.1/"}, "both \"command\" and \"url\""),
    ({"command": ""}, "\"command\" must be a non-empty string"),
    ({"command": "a", "args": "--flag"}, "\"args\" must be a list of strings"),
    ({"command": "a", "arg": ["x"]}, "unknown key 'arg'"),
    ({"command": "a", "envFile": ".env"}, "\"envFile\" is not supported"),
    ({"command": "a", "env": {"K": ["v"]}}, "\"env\".K must be a string"),
    ({"command": "a", "args": ["${input:token}"]}, "asks for an input"),
    ({"command": "a", "args": ["${config:x}"]}, "unknown variable ${config:x}"),
    ({"type": "http", "url": "127.0.0.1:8000"}, "must start with http:// or https://"),
    ({"type": "http", "url": "http://127.0.0.1/", "command": "a"}, "\"command\" belongs to a stdio server"),
    ({"command": "a", "timeout_s": 0}, "\"timeout_s\" must be a positive number"),
    ({"command": "a", "disabled": "yes"}, "\"disabled\" must be true or false"),
    ("python server.py", "must be an object"),
])
def test_a_bad_entry_is_a_typed_error_of_its_own(tmp_path, entry, says):
    write_config(tmp_path, {"bad": entry, "good": {"command": "python"}})
    config = load_config(tmp_path)
    assert [s.name for s in config.servers] == ["good"]
    (problem,) = config.problems
    assert problem.name == "bad" and isinstance(problem.error, MCPConfigError)
    assert says in str(problem.error) and ".corolla/mcp.json: server 'bad'" in str(problem.error)


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not valid JSON"),
    ("[]", "must hold a JSON object"),
    ('{"server": {}}', "no \"servers\" (or \"mcpServers\") object; its keys: 'server'"),
    ('{"servers": {}, "mcpServers": {}}', "both \"servers\" and \"mcpServers\""),
    ('{"servers": []}', "must be an object of NAME: server"),
])
def test_a_bad_file_is_one_problem_and_never_raises(tmp_path, text, says):
    (tmp_path / ".corolla").mkdir()
    (tmp_path / ".corolla/mcp.json").write_text(text)
    config = load_config(tmp_path)
    assert config.servers == () and len(config.problems) == 1
    assert config.problems[0].name == "" and says in str(config.problems[0].error)


def test_jsonc_strings_keep_what_looks_like_comments():
    assert json.loads(strip_jsonc('{"a": "x // y /* z */", "b": [1, 2,], // c\n}')) == {"a": "x // y /* z */",
                                                                                       "b": [1, 2]}


def test_tool_names_fit_openai_function_names():
    assert qualified_name("notes", "add", {}) == "mcp__notes__add"
    assert qualified_name("my server", "do.it!", {}) == "mcp__my_server__do_it_"
    long = qualified_name("s" * 40, "t" * 40, {})
    assert len(long) == 64 and long.startswith("mcp__ssss")
    taken = {"mcp__a_b__c": None}
    assert qualified_name("a.b", "c", taken) != "mcp__a_b__c" and len(qualified_name("a.b", "c", taken)) <= 64


# --- the approval policy and the argument check (pure) ------------------------------------------------
def test_the_policy_for_mcp_tools():
    ask = CommandPolicy(approve=lambda call: True)
    assert ask.decide_tool("mcp__notes__add").action == "ask"
    assert ask.decide_tool("mcp__notes__add", trusted=True).action == "run"
    for prefix in ("mcp__notes__add", "mcp__notes", "mcp"):
        assert CommandPolicy(auto_approve=(prefix,)).decide_tool("mcp__notes__add").action == "run"
    assert CommandPolicy(auto_approve=("mcp__other",)).decide_tool("mcp__notes__add").action == "refuse"
    assert CommandPolicy(auto_approve=("mcp__notes__ad",)).decide_tool("mcp__notes__add").action == "refuse"
    refused = CommandPolicy().decide_tool("mcp__notes__add")
    assert refused.action == "refuse" and "--auto-approve mcp__notes__add" in refused.reason
    asked: list[str] = []
    no = CommandPolicy(approve=lambda c: asked.append(c) or False).authorize_tool("mcp__n__t", "mcp__n__t {}")
    assert no.action == "refuse" and asked == ["mcp__n__t {}"]

    def closed_stdin(call):
        raise EOFError

    assert CommandPolicy(approve=closed_stdin).authorize_tool("mcp__n__t", "").action == "refuse"


def test_arguments_are_checked_with_the_servers_whole_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "tags": {"type": ["array", "null"]},
                                               "mode": {"anyOf": [{"enum": ["x"]}, {"type": "null"}]},
                                               "n": {"type": "number"}},
              "required": ["a"], "additionalProperties": False}
    tool = Tool("mcp__s__t", "", schema, lambda ctx, args: None, jsonschema=True)
    assert check_args_jsonschema(tool, '{"a": 1, "n": null, "tags": null}') == ({"a": 1, "tags": None}, "")
    checked, why = check_args_jsonschema(tool, {"a": "1"})
    assert checked is None and "argument 'a': '1' is not of type 'integer'" in why and "Usage: mcp__s__t(" in why
    assert "missing required argument 'a'" in check_args_jsonschema(tool, {})[1]
    assert "'b' was unexpected" in check_args_jsonschema(tool, {"a": 1, "b": 2})[1]
    broken = Tool("mcp__s__u", "", {"type": "object", "properties": {"a": {"type": "no-such-type"}}},
                  lambda ctx, args: None, jsonschema=True)
    assert check_args_jsonschema(broken, {"a": 1}) == ({"a": 1}, "")  # left to the server


# --- a real server over stdio -------------------------------------------------------------------------
def test_stdio_server_tools_are_listed_with_their_schemas(hub):
    tools = {t.name: t for t in hub.tools()}
    assert list(tools) == TOOLS
    add = tools["add"]
    assert add.qualified == "mcp__notes__add" and add.description == "Add two integers."
    assert add.input_schema["properties"]["a"]["type"] == "integer" and add.input_schema["required"] == ["a", "b"]
    as_agent = agent_tools(hub)["mcp__notes__add"]
    assert as_agent.parameters == add.input_schema and as_agent.jsonschema
    assert as_agent.description == "[MCP server notes] Add two integers."


def test_calls_give_the_tools_text_and_their_own_failures(hub, notes_log):
    assert hub.call("mcp__notes__add", {"a": 2, "b": 40}).text == "42"
    missing = hub.call("mcp__notes__read_note", {"name": "nope"})
    assert missing.is_error and "no note named 'nope'; the notes are ideas, todo" in missing.text
    failed = hub.call("mcp__notes__fail", {"message": "disk full"})
    assert failed.is_error and "disk full" in failed.text
    assert 'add {"a": 2, "b": 40}' in calls(notes_log)


def test_refused_approval_means_the_server_never_sees_the_call(hub, notes_log):
    asked: list[str] = []
    ctx = ToolContext(root=Path("."), policy=CommandPolicy(approve=lambda c: asked.append(c) or False),
                      extra=agent_tools(hub))
    result = run_tool(ctx, "mcp__notes__add", {"a": 1234, "b": 5678})
    assert not result.ok and result.data["refused"] and "declined" in result.output
    assert asked == ['mcp__notes__add {"a": 1234, "b": 5678}']
    unattended = ToolContext(root=Path("."), policy=CommandPolicy(), extra=agent_tools(hub))  # nobody to ask
    result = run_tool(unattended, "mcp__notes__add", {"a": 1234, "b": 5678})
    assert not result.ok and "--auto-approve mcp__notes__add" in result.output
    approved = ToolContext(root=Path("."), policy=CommandPolicy(approve=lambda c: True), extra=agent_tools(hub))
    assert run_tool(approved, "mcp__notes__add", {"a": 1, "b": 1}).output == "2"
    assert not any("1234" in c for c in calls(notes_log)) and 'add {"a": 1, "b": 1}' in calls(notes_log)


def test_bad_arguments_are_answered_here_and_not_sent(hub, notes_log):
    ctx = ToolContext(root=Path("."), policy=CommandPolicy(auto_approve=("mcp",)), extra=agent_tools(hub))
    result = run_tool(ctx, "mcp__notes__add", '{"a": "seven", "b": 1}')
    assert not result.ok and "argument 'a': 'seven' is not of type 'integer'" in result.output
    assert "unknown tool 'mcp__notes__ad'" in run_tool(ctx, "mcp__notes__ad", {}).output
    assert "Did you mean 'mcp__notes__add'?" in run_tool(ctx, "mcp__notes__ad", {}).output
    assert not any("seven" in c for c in calls(notes_log))


def test_output_is_capped_like_a_commands(hub):
    policy = CommandPolicy(auto_approve=("mcp__notes",), max_output_chars=2000)
    ctx = ToolContext(root=Path("."), policy=policy)
    info = hub.tool("mcp__notes__huge")
    result = call_tool(ctx, hub, info, {"chars": 100_000})
    assert result.ok and len(result.output) < 2200
    assert result.output.startswith("HEAD-MARKER") and result.output.endswith("TAIL-MARKER")
    assert "characters cut from the middle (100024 in all)" in result.output
    assert result.data["truncated"] and result.data["chars"] == 100_024


def test_a_call_past_its_deadline_is_a_timeout_and_the_server_goes_on(hub):
    with pytest.raises(MCPTimeoutError, match="mcp__notes__slow did not finish within 0.5 s"):
        hub.call("mcp__notes__slow", {"seconds": 5}, timeout_s=0.5)
    assert hub.call("mcp__notes__add", {"a": 1, "b": 2}).text == "3"


def test_the_agent_describes_mcp_tools_in_the_prompt_format(llm, llm_model, workspace, hub):
    llm_model.queue('<tool_call>{"name": "mcp__notes__read_note", "arguments": {"name": "todo"}}</tool_call>',
                    "The todo note says: buy milk.")
    config = AgentConfig(native_tools=False, mode="tools")
    a = Agent(llm, workspace, policy=CommandPolicy(auto_approve=("mcp__notes",)), config=config, mcp=hub)
    report = a.run("What is on the todo note?")
    assert report.status == "done", report.to_text()
    assert "- mcp__notes__read_note(name): [MCP server notes] Read one of the notes" in llm_model.requests[0].prompt
    assert "Result of mcp__notes__read_note:\nbuy milk" in llm_model.requests[1].last_message
    assert hub.statuses()[0].state == "ready"  # the caller's hub: the agent leaves it open


def test_the_agent_asks_and_a_refusal_reaches_the_model(llm, llm_model, workspace, hub, notes_log):
    llm_model.queue(call("mcp__notes__add", a=4321, b=1), "I was not allowed to add them.")
    asked: list[str] = []
    policy = CommandPolicy(approve=lambda c: asked.append(c) or False)
    report = Agent(llm, workspace, policy=policy, config=AgentConfig(mode="tools"), mcp=hub).run("Add 4321 and 1.")
    assert report.status == "done" and asked == ['mcp__notes__add {"a": 4321, "b": 1}']
    assert "mcp__notes__add refused: the user declined" in llm_model.requests[1].prompt.split("<tool_response>")[-1]
    assert report.commands == [{"command": 'mcp__notes__add {"a": 4321, "b": 1}', "exit_code": None,
                                "refused": True}]
    assert not any("4321" in c for c in calls(notes_log))


# --- the agent with its own servers: started for the run, stopped with it ----------------------------------
def test_the_agent_calls_a_mcp_tool_and_leaves_no_process_behind(llm, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log)})
    llm_model.queue(call("mcp__notes__add", a=2, b=40), "2 + 40 = 42.")
    store = SessionStore(workspace)
    a = Agent(llm, workspace, policy=CommandPolicy(auto_approve=("mcp__notes",)), store=store,
              config=AgentConfig(mode="tools"))
    report = a.run("Add 2 and 40 with the notes server.")
    assert report.status == "done" and report.summary == "2 + 40 = 42.", report.to_text()
    first, second = llm_model.requests[0].prompt, llm_model.requests[1].prompt
    assert '"name": "mcp__notes__add"' in first and '"a": {"title": "A", "type": "integer"}' in first
    assert second.split("<tool_response>")[-1].strip().startswith("42")  # the result went back to the model
    assert calls(log) == ['add {"a": 2, "b": 40}']
    events = {e.type: e.data for e in store.events(a.session_id)}
    assert events["mcp"]["servers"][0]["state"] == "ready" and "mcp__notes__add" in events["mcp"]["servers"][0]["tools"]
    assert events["tool_result"]["ok"] and events["tool_result"]["output"] == "42"
    (pid,) = pids(log)
    assert wait_until(lambda: not running(pid)), f"the MCP server {pid} outlived the agent's run"
    assert a.ctx.extra == {}


def test_an_agent_in_its_worktree_uses_the_main_trees_servers_on_the_worktree(scripted, llm_model, workspace,
                                                                              tmp_path):
    from corolla.assistant.agent.background import AgentManager
    from corolla.assistant.agent.runner import RunOptions

    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log)})  # .corolla/: not in the agent's worktree
    llm_model.queue(call("mcp__notes__workdir"), "The server runs in the worktree.")
    manager = AgentManager(workspace)
    _, base = scripted
    agent_id = manager.start("Where does the notes server run?", background=False, options=RunOptions(
        endpoint=base, model="scripted", max_steps=4, mode="tools", auto_approve=("mcp__notes",)))
    meta = manager.wait(agent_id).meta
    assert meta["status"] == "done", meta
    results = [e.data for e in manager.events(agent_id) if e.type == "tool_result"]
    assert [(r["name"], r["ok"]) for r in results] == [("mcp__notes__workdir", True)]
    assert Path(results[0]["output"]).resolve() == Path(meta["workdir"]).resolve() != workspace.resolve()
    (pid,) = pids(log)
    assert wait_until(lambda: not running(pid))


def test_a_server_that_dies_mid_call_is_a_failed_result_not_a_crash(llm, llm_model, workspace, tmp_path):
    log = tmp_path / "calls.log"
    write_config(workspace, {"notes": stdio_entry(log, trusted=True)})
    llm_model.queue(call("mcp__notes__crash"), call("mcp__notes__add", a=1, b=1), "The notes server is gone.")
    store = SessionStore(workspace)
    a = Agent(llm, workspace, policy=CommandPolicy(), store=store, config=AgentConfig(mode="tools"))
    report = a.run("Crash the server, then add 1 and 1.")
    assert report.status == "done", report.to_text()
    results = [e.data for e in store.events(a.session_id) if e.type == "tool_result"]
    assert [r["ok"] for r in results] == [False, False]
    assert "mcp__notes__crash failed: MCP server 'notes' stopped" in results[0]["output"]
    assert results[0]["data"]["error"] == "MCPServerGoneError"
    assert "MCP server 'notes' is not running" in results[1]["output"]
    assert "stopped: the server exited" in llm_model.requests[1].prompt.split("<tool_response>")[-1]
    assert calls(log) == ["crash {}"]  # trusted: no approval asked; the add never reached a server
    (pid,) = pids(log)
    assert wait_until(lambda: not running(pid))


def test_a_server_killed_between_calls_is_noticed_at_the_next_one(tmp_path):
    log = tmp_path / "calls.log"
    write_config(tmp_path, {"notes": stdio_entry(log)})
    with MCPHub.from_workspace(tmp_path) as h:
        assert [s.state for s in h.start()] == ["ready"]
        assert h.call("mcp__notes__add", {"a": 1, "b": 2}).text == "3"
        (pid,) = pids(log)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(MCPServerGoneError, match="exited or dropped the connection"):
            h.call("mcp__notes__add", {"a": 1, "b": 2})
        assert h.statuses()[0].state == "stopped"
    assert wait_until(lambda: not running(pid))


def test_servers_that_cannot_start_say_why(tmp_path):
    log = tmp_path / "calls.log"
    exits = {"command": sys.executable, "args": ["-c", "import sys; print('no licence key', file=sys.stderr); "
                                                       "sys.exit(2)"]}
    write_config(tmp_path, {"missing": {"command": "corolla-no-such-server"},
                            "exits": exits,
                            "silent": {"command": "sleep", "args": ["30"]},
                            "refused": {"type": "http", "url": "http://127.0.0.1:9/mcp"},
                            "nofolder": {**stdio_entry(log), "cwd": "no/such/dir"}})
    with MCPHub.from_workspace(tmp_path, options=MCPOptions(start_timeout_s=1.0)) as h:
        status = {s.name: s for s in h.start()}
        assert h.tools() == []
        with pytest.raises(MCPCallError, match="no MCP tool named 'mcp__missing__x'"):
            h.call("mcp__missing__x", {})
    assert all(s.state == "failed" and s.error_type == "MCPStartError" for s in status.values())
    assert "command not found: 'corolla-no-such-server' is not on PATH" in status["missing"].error
    assert "exited" in status["exits"].error and "no licence key" in status["exits"].error
    assert "did not answer within 1 s" in status["silent"].error
    assert "cannot connect to http://127.0.0.1:9/mcp" in status["refused"].error
    assert "no/such/dir does not exist" in status["nofolder"].error
    assert not pids(log)


# --- a real server over streamable HTTP ---------------------------------------------------------------
def test_streamable_http_server(http_server, tmp_path):
    write_config(tmp_path, {"web": {"type": "http", "url": http_server, "headers": {"X-Corolla-Test": "1"}}})
    with MCPHub.from_workspace(tmp_path) as h:
        (status,) = h.start()
        assert status.state == "ready" and status.transport == "http" and status.target == http_server
        assert [t.qualified for t in h.tools()] == [f"mcp__web__{name}" for name in TOOLS]
        assert h.call("mcp__web__add", {"a": 20, "b": 22}).text == "42"
        with pytest.raises(MCPTimeoutError):
            h.call("mcp__web__slow", {"seconds": 3}, timeout_s=0.3)
        with pytest.raises(MCPServerGoneError, match="stopped"):
            h.call("mcp__web__crash", {})
        with pytest.raises(MCPServerGoneError, match="not running"):
            h.call("mcp__web__add", {"a": 1, "b": 1})
        assert h.statuses()[0].state == "stopped"


# --- corolla mcp list -----------------------------------------------------------------------------------
def corolla(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "corolla", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_mcp_list_shows_each_server_with_its_tools_or_why_not(tmp_path):
    log = tmp_path / "calls.log"
    write_config(tmp_path, {"notes": stdio_entry(log), "missing": {"command": "corolla-no-such-server"},
                            "bad": {"type": "sse", "url": "http://127.0.0.1:1/sse"}})
    done = corolla("mcp", "list", "--root", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    out = done.stdout
    assert "1 of 3 ready" in out and "notes  stdio" in out and "ready, 7 tools" in out
    assert "mcp__notes__add(a, b): Add two integers." in out
    assert "mcp__notes__crash(): The server process exits in the middle of this call." in out
    assert "missing  stdio  corolla-no-such-server  FAILED" in out
    assert "MCPStartError: command not found: 'corolla-no-such-server' is not on PATH" in out
    assert "MCPConfigError: .corolla/mcp.json: server 'bad': the legacy SSE transport is not supported" in out
    assert not any(running(pid) for pid in pids(log))


def test_mcp_list_json_and_exit_status(tmp_path):
    empty = corolla("mcp", "list", "--root", str(tmp_path), cwd=tmp_path)
    assert empty.returncode == 0 and "no MCP servers configured" in empty.stdout
    write_config(tmp_path, {"off": {"command": "x", "disabled": True}, "missing": {"command": "corolla-no-such"}},
                 file=".vscode/mcp.json")
    done = corolla("mcp", "list", "--json", "--root", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    data = json.loads(done.stdout)
    assert data["files"] == [".vscode/mcp.json"]
    assert [(s["name"], s["state"]) for s in data["servers"]] == [("missing", "failed"), ("off", "disabled")]
    assert "not on PATH" in data["servers"][0]["error"]
