"""The service's agent endpoints over the scripted model: start, list, show, SSE events, stop, apply,
discard and their errors, with real runner processes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from corolla.api.server import serving
from corolla.assistant.core import Assistant, AssistantConfig
from corolla.assistant.llm import LLM, LLMConfig
from corolla.assistant.service import create_service
from tests.assistant.conftest import git
from tests.assistant.test_agent_background import ADD_DOC, after_tool, call, kill_all, of_task, wait_for


@pytest.fixture()
def service(scripted, llm_model, workspace):
    _, base = scripted
    assistant = Assistant(LLM(LLMConfig(endpoint=base, model="scripted")), workspace,
                          config=AssistantConfig(edit_format="whole"))
    app = create_service(assistant, token="s3cret")  # with the agent routes
    manager = app.state.agents
    try:
        with serving(app, "127.0.0.1", 0) as url:
            with httpx.Client(base_url=url, headers={"Authorization": "Bearer s3cret"}, timeout=60) as client:
                yield client
    finally:
        kill_all(manager)


def sse(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_start_follow_show_apply(service, llm_model, workspace):
    llm_model.add(after_tool("TASK-R"), "Documented add.")
    llm_model.add(of_task("TASK-R"), call("edit", path="calc.py", search="def add(a, b):\n    return a + b",
                                          replace=ADD_DOC))
    started = service.post("/agents", json={"task": "TASK-R: document add", "max_steps": 4})
    assert started.status_code == 200, started.text
    agent = started.json()
    agent_id = agent["id"]
    assert agent["status"] in ("queued", "running") and agent["branch"] == f"corolla/agent-{agent_id}"
    assert [a["id"] for a in service.get("/agents").json()["agents"]] == [agent_id]

    with service.stream("GET", f"/agents/{agent_id}/events") as response:  # follows until the agent finished
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
    assert events[-1] == {"type": "end", "status": "done"}
    types = [e["type"] for e in events[:-1]]
    assert types[:2] == ["status", "task"] and "edit" in types and "report" in types
    assert [e["seq"] for e in events[:-1]] == list(range(1, len(events)))
    with service.stream("GET", f"/agents/{agent_id}/events", params={"after": len(events) - 2}) as response:
        assert [e["type"] for e in sse(response)] == ["status", "end"]

    shown = service.get(f"/agents/{agent_id}").json()
    assert shown["status"] == "done" and shown["report"]["status"] == "done"
    assert '+    """Return the sum of a and b."""' in shown["diff"]
    assert "Return the sum" not in (workspace / "calc.py").read_text()

    applied = service.post(f"/agents/{agent_id}/apply")
    assert applied.json() == {"id": agent_id, "status": "applied", "files": ["calc.py"]}
    assert "Return the sum" in (workspace / "calc.py").read_text()
    for action in ("apply", "stop", "discard"):  # wrong state: 409 with the service's error shape
        again = service.post(f"/agents/{agent_id}/{action}")
        assert again.status_code == 409 and again.json()["error"]["type"] == "AgentStateError", again.text


def test_stop_then_discard(service, llm_model, workspace):
    asked, release = threading.Event(), threading.Event()

    def hold(prompt: str) -> str:  # the model "thinks" until the test is over
        asked.set()
        release.wait(60)
        return "late answer"

    llm_model.add(of_task("TASK-HOLD"), hold)
    try:
        agent_id = service.post("/agents", json={"task": "TASK-HOLD: think hard"}).json()["id"]
        wait_for(asked.is_set, "the agent to ask the model")
        assert service.get(f"/agents/{agent_id}").json()["status"] == "running"
        stopped = service.post(f"/agents/{agent_id}/stop")
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text
        with service.stream("GET", f"/agents/{agent_id}/events") as response:
            assert sse(response)[-1] == {"type": "end", "status": "stopped"}
        worktree = Path(stopped.json()["worktree"])
        assert worktree.is_dir()
        assert service.post(f"/agents/{agent_id}/discard").json() == {"id": agent_id, "status": "discarded"}
        assert not worktree.exists() and git(workspace, "branch", "--list", "corolla/agent-*") == ""
        assert service.get(f"/agents/{agent_id}").json()["status"] == "discarded"
    finally:
        release.set()


@pytest.mark.parametrize("method,path,body,status,kind", [
    ("GET", "/agents/nope", None, 404, "AgentNotFoundError"),
    ("GET", "/agents/nope/events", None, 404, "AgentNotFoundError"),
    ("POST", "/agents/nope/stop", None, 404, "AgentNotFoundError"),
    ("POST", "/agents/nope/apply", None, 404, "AgentNotFoundError"),
    ("POST", "/agents/nope/discard", None, 404, "AgentNotFoundError"),
    ("POST", "/agents", {}, 400, "BadRequest"),
    ("POST", "/agents", {"task": "x", "surprise": 1}, 400, "BadRequest"),
    ("POST", "/agents", {"task": "x", "max_steps": 0}, 400, "BadRequest"),
    ("GET", "/agents/nope/events?after=-1", None, 400, "BadRequest"),
])
def test_errors(service, method, path, body, status, kind):
    response = service.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind and response.json()["error"]["message"]


def test_a_chat_session_is_not_an_agent(service):
    chat = service.post("/sessions", json={"title": "chat"}).json()
    response = service.get(f"/agents/{chat['id']}")
    assert response.status_code == 404 and "not an agent" in response.json()["error"]["message"]
