"""``corolla assistant serve``'s app over a scripted model: every endpoint, its SSE stream and errors."""

from __future__ import annotations

import json

import httpx
import pytest

from corolla.api.server import serving
from corolla.assistant.core import Assistant, AssistantConfig
from corolla.assistant.llm import LLM, LLMConfig
from corolla.assistant.service import create_service
from tests.assistant.conftest import CALC
from tests.assistant.test_assistant import MEAN_FIXED

EDITOR = {"current_file": "calc.py", "selection": [5, 6], "open_files": ["calc.py"]}


@pytest.fixture()
def service(scripted, llm_model, workspace):
    _, base = scripted
    assistant = Assistant(LLM(LLMConfig(endpoint=base)), workspace, config=AssistantConfig(edit_format="whole"))
    with serving(create_service(assistant, token="s3cret"), "127.0.0.1", 0) as url:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer s3cret"}, timeout=60) as client:
            yield client


def sse(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_health_context_and_sessions(service):
    health = service.get("/health").json()
    assert health["model"] == "scripted" and health["model_ok"] is True
    ctx = service.post("/context", json={"editor": EDITOR, "query": "what is #file:AGENTS.md"}).json()
    labels = [p["label"] for p in ctx["parts"]]
    assert any(label.startswith("calc.py") for label in labels) and any("AGENTS.md" in label for label in labels)
    assert 0 < ctx["used_tokens"] <= ctx["budget_tokens"]
    created = service.post("/sessions", json={"title": "mine"}).json()
    assert [s["id"] for s in service.get("/sessions").json()["sessions"]] == [created["id"]]
    assert service.delete(f"/sessions/{created['id']}").json() == {"deleted": created["id"]}
    assert service.get(f"/sessions/{created['id']}").status_code == 404


def test_message_streams_events_and_is_kept(service, llm_model):
    llm_model.add("averages", "It averages the values.")
    sid = service.post("/sessions", json={}).json()["id"]
    with service.stream("POST", f"/sessions/{sid}/messages",
                        json={"text": "what averages here?", "editor": EDITOR}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
    assert [e["type"] for e in events][:2] == ["session", "context"] and events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "It averages the values."
    session = service.get(f"/sessions/{sid}").json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
    assert session["title"] == "what averages here?"


def test_slash_fix_in_chat_gives_an_edit_to_accept(service, llm_model, workspace):
    llm_model.add("Fix", MEAN_FIXED)
    sid = service.post("/sessions", json={}).json()["id"]
    with service.stream("POST", f"/sessions/{sid}/messages", json={"text": "/fix", "editor": EDITOR}) as r:
        edit = next(e for e in sse(r) if e["type"] == "edit")
    assert service.get(f"/edits/{edit['edit_id']}").json()["status"] == "proposed"
    assert service.post(f"/edits/{edit['edit_id']}/accept").json()["status"] == "accepted"
    assert "raise ValueError" in (workspace / "calc.py").read_text()
    assert service.post("/undo", json={"session_id": sid}).json()["edit_id"] == edit["edit_id"]
    assert (workspace / "calc.py").read_text() == CALC


def test_edit_propose_reject_and_errors(service, llm_model, workspace):
    llm_model.add("empty list", MEAN_FIXED)
    body = {"instruction": "raise ValueError on an empty list", "editor": EDITOR}
    proposal = service.post("/edits", json=body).json()
    assert "+        raise ValueError" in proposal["diff"] and proposal["files"] == ["calc.py"]
    assert service.post(f"/edits/{proposal['edit_id']}/reject").json()["status"] == "rejected"
    assert (workspace / "calc.py").read_text() == CALC
    again = service.post(f"/edits/{proposal['edit_id']}/accept")
    assert again.status_code == 400 and "rejected" in again.json()["error"]["message"]
    # the file changed under a proposal: accepting it is refused, nothing written
    fresh = service.post("/edits", json=body).json()
    (workspace / "calc.py").write_text(CALC + "# edited meanwhile\n")
    stale = service.post(f"/edits/{fresh['edit_id']}/accept")
    assert stale.status_code == 409 and stale.json()["error"]["type"] == "StaleFileError"
    assert (workspace / "calc.py").read_text().endswith("# edited meanwhile\n")
    # a reply that cannot be applied: 422 with the reason
    llm_model.reset()
    llm_model.add("empty list", "No code, sorry.")
    refused = service.post("/edits", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "MalformedReplyError"


def test_an_edit_that_renames_a_used_definition_needs_allow_structure(service, llm_model, workspace):
    # every attempt (the retry too, told why the first was refused) renames `mean`
    llm_model.add(lambda prompt: True, "```python\ndef average(values):\n    return sum(values) / len(values)\n```")
    body = {"instruction": "tidy this up", "editor": EDITOR}
    refused = service.post("/edits", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "StructureBreakError", refused.json()
    assert "mean" in refused.json()["error"]["message"]
    allowed = service.post("/edits", json={**body, "allow_structure": True})
    assert allowed.status_code == 200 and "+def average(values):" in allowed.json()["diff"]
    assert (workspace / "calc.py").read_text() == CALC  # proposed, not applied


@pytest.mark.parametrize("method,path,body,status", [
    ("post", "/edits", {"instruction": "x", "editor": {}}, 400),
    ("post", "/edits", {"instruction": "", "editor": EDITOR}, 400),
    ("post", "/context", {"editor": {"selection": [1, 2, 3]}}, 400),
    ("post", "/sessions", {"title": "t", "unknown": 1}, 400),
    ("post", "/sessions/nope/messages", {"text": "hi"}, 404),
    ("get", "/edits/nope", None, 404),
    ("post", "/undo", {}, 400),
])
def test_bad_requests(service, method, path, body, status):
    response = getattr(service, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_unknown_command_is_an_error_before_the_stream(service):
    sid = service.post("/sessions", json={}).json()["id"]
    response = service.post(f"/sessions/{sid}/messages", json={"text": "/nope", "editor": EDITOR})
    assert response.status_code == 400 and response.json()["error"]["type"] == "UnknownCommandError"


def test_token_and_browser_origins_are_refused(service):
    base = str(service.base_url)
    assert httpx.get(f"{base}/health").status_code == 401
    forged = service.post("/sessions", json={}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403


def test_an_edit_the_editor_applied_itself_is_checked_on_disk(service, llm_model, workspace):
    llm_model.add("empty list", MEAN_FIXED)
    proposal = service.post("/edits", json={"instruction": "raise ValueError on an empty list",
                                            "editor": EDITOR}).json()
    after = proposal["changes"][0]["after"]
    assert proposal["changes"][0]["before"] == CALC and "raise ValueError" in after
    early = service.post(f"/edits/{proposal['edit_id']}/accept", json={"applied_by_editor": True})
    assert early.status_code == 409  # not saved yet: refused, still proposed
    (workspace / "calc.py").write_text(after)  # what the editor's WorkspaceEdit + save does
    done = service.post(f"/edits/{proposal['edit_id']}/accept", json={"applied_by_editor": True})
    assert done.json()["status"] == "accepted" and (workspace / "calc.py").read_text() == after
