"""The assistant service's agent endpoints (``add_agent_routes(app, assistant)``):

  POST /agents                       {task, background=true, max_steps?, auto_approve?, mode?} -> the agent
  GET  /agents                       agents, newest first
  GET  /agents/{id}                  the agent: task, status, report, diff
  GET  /agents/{id}/events[?after=N] SSE of its stored events, following until it has finished,
                                     then ``{"type": "end", "status": ...}``; resumes after N (or Last-Event-ID)
  POST /agents/{id}/stop | /apply | /discard

Errors are the service's ``{"error": {"type", "message"}}``: 404 for an unknown agent, 409 for a wrong
state (apply while running, stop after it finished) or a diff that conflicts with the working tree.
"""

from __future__ import annotations

import json

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from corolla.assistant import errors
from corolla.assistant.agent.background import ACTIVE, AgentManager, agent_json
from corolla.assistant.agent.modes import DEFAULT_MODE, Mode
from corolla.assistant.agent.runner import RunOptions
from corolla.sse import SSEResponse

POLL_S = 0.25


class StartAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=100_000)
    background: bool = True
    max_steps: int | None = Field(default=None, ge=1, le=500)
    auto_approve: list[str] = Field(default_factory=list, max_length=50)
    mode: Mode = DEFAULT_MODE


def _error(status: int, e: errors.AssistantError) -> JSONResponse:
    return JSONResponse({"error": {"type": e.code, "message": str(e)}}, status_code=status)


def add_agent_routes(app: FastAPI, assistant, manager: AgentManager | None = None) -> AgentManager:
    """Add the agent endpoints to the assistant's service; returns the manager (also ``app.state.agents``).
    Agents use the assistant's endpoint and model."""
    llm_config = assistant.llm.config
    if manager is None:
        manager = AgentManager(assistant.root, assistant.store)
        if llm_config.api_key and llm_config.api_key != "none":  # runners read it from the environment
            manager.env = {"COROLLA_API_KEY": llm_config.api_key}
    app.state.agents = manager

    async def agent_error(request: Request, e: errors.AgentError):
        status = 404 if isinstance(e, errors.AgentNotFoundError) else 409
        return _error(status, e)

    app.add_exception_handler(errors.AgentError, agent_error)

    def run(fn, *args):
        return anyio.to_thread.run_sync(lambda: fn(*args))

    @app.post("/agents")
    async def start(body: StartAgent):
        options = RunOptions(endpoint=llm_config.endpoint, model=llm_config.model, max_tokens=llm_config.max_tokens,
                             auto_approve=tuple(body.auto_approve), mode=body.mode)
        if body.max_steps is not None:
            options.max_steps = body.max_steps
        agent_id = await anyio.to_thread.run_sync(
            lambda: manager.start(body.task, background=body.background, options=options))
        return agent_json(await run(manager.get, agent_id))

    @app.get("/agents")
    async def agents():
        return {"agents": [agent_json(s) for s in await run(manager.list)]}

    @app.get("/agents/{agent_id}")
    async def show(agent_id: str):
        return await run(manager.show, agent_id)

    @app.get("/agents/{agent_id}/events")
    async def events(agent_id: str, request: Request, after: int = Query(default=0, ge=0)):
        await run(manager.get, agent_id)  # 404 before the stream starts
        last = request.headers.get("last-event-id", "")
        if last.isdigit():
            after = max(after, int(last))
        return SSEResponse(_follow(manager, agent_id, after))

    @app.post("/agents/{agent_id}/stop")
    async def stop(agent_id: str):
        return agent_json(await run(manager.stop, agent_id))

    @app.post("/agents/{agent_id}/apply")
    async def apply(agent_id: str):
        return await run(manager.apply, agent_id)

    @app.post("/agents/{agent_id}/discard")
    async def discard(agent_id: str):
        return await run(manager.discard, agent_id)

    return manager


async def _follow(manager: AgentManager, agent_id: str, after: int):
    """Stored events as SSE (``id:`` is the event's seq), polling until the agent has finished."""
    while True:
        status = (await anyio.to_thread.run_sync(manager.get, agent_id)).meta.get("status")
        for event in await anyio.to_thread.run_sync(manager.store.events, agent_id, after):
            after = event.seq
            yield f"id: {event.seq}\ndata: {json.dumps(event.to_json())}\n\n"
        if status not in ACTIVE:
            yield f"data: {json.dumps({'type': 'end', 'status': status})}\n\n"
            return
        await anyio.sleep(POLL_S)
