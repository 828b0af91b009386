"""``corolla assistant serve``: the assistant for editors, as JSON over HTTP with server-sent events.

One service serves one workspace. It listens on 127.0.0.1 and refuses requests that carry a browser
``Origin`` (unless allowed), so a web page cannot drive it; ``--token`` adds a bearer token.

  GET    /health                          endpoint, model, workspace, whether the model answers
  POST   /context                         {editor, query} -> the context parts that would be sent (chips)
  GET    /sessions[?kind=]                sessions, newest first
  POST   /sessions                        {title?} -> a new session
  GET    /sessions/{id}                   the session with its messages and edits
  DELETE /sessions/{id}
  POST   /sessions/{id}/messages          {text, editor} -> SSE: session, context, delta…, edit|edit_error, done;
                                          plain chat with MCP servers also warning, tool_call, tool_result
                                          (see Assistant.respond; the service asks nobody: a tool of an
                                          untrusted server runs only if `serve --auto-approve` names it)
  POST   /edits                           {instruction, editor, session_id?, format?} -> a proposal (diff + edit_id)
  GET    /edits/{id}                      the proposal and its status
  POST   /edits/{id}/accept | /reject     apply atomically ({applied_by_editor: true}: the editor applied
                                          and saved it, so its own undo works; checked on disk) | drop
  POST   /undo                            {session_id?} revert the last accepted edit
  POST   /agents                          {task, background?, max_steps?} -> an agent in its own git worktree
  GET    /agents, /agents/{id}            agent sessions; one with its status, report and diff
  GET    /agents/{id}/events?after=N      SSE of its steps, following until it ends
  POST   /agents/{id}/stop | /apply | /discard
  POST   /completions                     {prefix, suffix, path?, language?, open_files?, buffers?, multiline?}
                                          -> ghost text to insert at the cursor (assistant.completions);
                                          the editor hanging up cancels it and the generation behind it
  GET    /completions/stats               counts: requests, cached, cancelled, superseded, streams open
Errors are ``{"error": {"type", "message"}}`` with 400 (bad request), 404, 409 (stale file, wrong
state), 422 (a reply that cannot be applied), 503 (model endpoint down, or the service shutting down).

When the service shuts down (``app.state.closing``, closed by :class:`corolla.api.server.ApiServer`),
open requests end at once: an SSE stream with ``{"type": "error", "error": {"type": "ShuttingDown"}}``,
any other with a 503 of that type; work they started in threads is abandoned (a generation stops when
its HTTP stream to the model is dropped).
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from corolla.assistant import errors
from corolla.assistant.completions import Completer, CompletionConfig, CompletionRequest
from corolla.assistant.context import EditorState
from corolla.assistant.core import Assistant
from corolla.assistant.edits.types import EditFormat
from corolla.sse import Closing, SSEResponse

MAX_TEXT = 200_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Editor(Strict):
    current_file: str | None = None
    selection: tuple[int, int] | None = None
    cursor_line: int | None = Field(default=None, ge=1)
    open_files: list[str] = Field(default_factory=list, max_length=200)
    buffers: dict[str, str] = Field(default_factory=dict)
    diagnostics: list[str] = Field(default_factory=list, max_length=200)

    def state(self, root: Path) -> EditorState:
        return EditorState(root=root, current_file=self.current_file, selection=self.selection,
                           cursor_line=self.cursor_line, open_files=tuple(self.open_files),
                           buffers=dict(self.buffers), diagnostics=tuple(self.diagnostics))


class ContextRequest(Strict):
    editor: Editor = Field(default_factory=Editor)
    query: str = Field(default="", max_length=MAX_TEXT)


class NewSession(Strict):
    title: str = Field(default="", max_length=200)


class MessageRequest(Strict):
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    editor: Editor = Field(default_factory=Editor)
    allow_structure: bool = False  # an edit may remove, rename or re-nest definitions other code uses


class EditRequest(Strict):
    instruction: str = Field(min_length=1, max_length=MAX_TEXT)
    editor: Editor
    session_id: str | None = None
    format: EditFormat | None = None
    allow_structure: bool = False  # as in MessageRequest


class CompleteRequest(Strict):
    prefix: str = Field(max_length=MAX_TEXT)  # the document's text before the cursor
    suffix: str = Field(default="", max_length=MAX_TEXT)  # and after it
    path: str | None = Field(default=None, max_length=4096)  # workspace-relative; None for an untitled one
    language: str | None = Field(default=None, max_length=64)  # the editor's language id
    open_files: list[str] = Field(default_factory=list, max_length=200)
    buffers: dict[str, str] = Field(default_factory=dict)  # unsaved texts of open files
    multiline: bool | None = None  # None: one line or a block, as the syntax at the cursor suggests

    def request(self) -> CompletionRequest:
        return CompletionRequest(self.prefix, self.suffix, self.path, self.language, tuple(self.open_files),
                                 dict(self.buffers), self.multiline)


class AcceptRequest(Strict):
    applied_by_editor: bool = False  # the editor applied and saved it itself (its undo stack keeps it)


class UndoRequest(Strict):
    session_id: str | None = None


STATUS = [(errors.EndpointError, 503), (errors.EditError, 422), (errors.StaleFileError, 409)]


def _status(error: errors.AssistantError) -> int:
    if "NotFound" in error.code:
        return 404
    status = 400
    for kind, code in STATUS:  # the most specific class listed last wins
        if isinstance(error, kind):
            status = code
    return status


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


SHUTTING_DOWN = "the assistant service is shutting down; start it again (the editor's status bar can)"
FAREWELL = f"data: {json.dumps({'type': 'error', 'error': {'type': 'ShuttingDown', 'message': SHUTTING_DOWN}})}\n\n"


class _ShuttingDown(Exception):
    pass


def create_service(assistant: Assistant, *, token: str | None = None, allow_origins: tuple[str, ...] = (),
                   completions: CompletionConfig | None = None) -> FastAPI:
    app = FastAPI(title="corolla assistant", docs_url=None, redoc_url=None)
    root = assistant.root
    app.state.closing = closing = Closing()
    app.state.sse_farewell = FAREWELL  # every SSE stream of this app, the agents' too, ends with it on shutdown

    @app.middleware("http")
    async def guard(request: Request, call_next):
        origin = request.headers.get("origin")
        if origin is not None and origin not in allow_origins:
            return _error(403, "ForbiddenOrigin", f"requests from web pages ({origin}) are refused")
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "Unauthorized", "this service needs its token: Authorization: Bearer TOKEN")
        if closing.closed:
            return _error(503, "ShuttingDown", SHUTTING_DOWN)
        return await call_next(request)

    @app.exception_handler(errors.AssistantError)
    async def assistant_error(request: Request, e: errors.AssistantError):
        return _error(_status(e), e.code, str(e))

    @app.exception_handler(_ShuttingDown)
    async def shutting_down(request: Request, e: _ShuttingDown):
        return _error(503, "ShuttingDown", SHUTTING_DOWN)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors())
        return _error(400, "BadRequest", where or "invalid request")

    async def run(fn, *args):
        """``fn(*args)`` in a worker thread; a shutdown answers 503 at once and abandons the thread
        (it may be waiting minutes on the model)."""
        return await until_closed(closing, lambda: anyio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True))

    @app.get("/health")
    async def health():
        info = {"workspace": str(root), "endpoint": assistant.llm.config.endpoint}
        try:
            info["model"] = await run(lambda: assistant.llm.model)
            info["model_ok"] = True
        except errors.EndpointError as e:
            info.update(model=None, model_ok=False, problem=str(e))
        return info

    @app.post("/context")
    async def context(body: ContextRequest):
        ctx = await run(assistant.context, body.editor.state(root), body.query)
        return {"parts": ctx.to_json(), "used_tokens": ctx.used_tokens, "budget_tokens": ctx.budget_tokens,
                "dropped": list(ctx.dropped)}

    @app.get("/sessions")
    async def sessions(kind: str | None = None):
        return {"sessions": [s.to_json() for s in await run(assistant.store.list, kind)]}

    @app.post("/sessions")
    async def new_session(body: NewSession):
        return (await run(assistant.store.create, body.title)).to_json()

    @app.get("/sessions/{session_id}")
    async def session(session_id: str):
        def read():
            s = assistant.store.get(session_id)
            return {**s.to_json(), "messages": [m.to_json() for m in assistant.store.messages(session_id)],
                    "edits": [_edit_json(e) for e in assistant.store.edits(session_id)]}
        return await run(read)

    @app.delete("/sessions/{session_id}")
    async def delete_session(session_id: str):
        await run(assistant.store.get, session_id)
        await run(assistant.store.delete, session_id)
        return {"deleted": session_id}

    @app.post("/sessions/{session_id}/messages")
    async def message(session_id: str, body: MessageRequest):
        await run(assistant.store.get, session_id)
        events = assistant.respond(body.text, body.editor.state(root), session_id, allow_structure=body.allow_structure)
        first = await run(next, events)  # errors before anything is streamed become plain HTTP errors
        return _sse(first, events, closing)

    @app.post("/edits")
    async def propose(body: EditRequest):
        if not body.editor.current_file:
            return _error(400, "BadRequest", "editor.current_file: an edit needs the file to change")
        outcome = await run(functools.partial(assistant.propose_edit, allow_structure=body.allow_structure),
                            body.instruction, body.editor.state(root), body.session_id, body.format)
        return outcome.to_json()

    @app.get("/edits/{edit_id}")
    async def get_edit(edit_id: str):
        return _edit_json(await run(assistant.store.get_edit, edit_id))

    @app.post("/edits/{edit_id}/accept")
    async def accept(edit_id: str, body: AcceptRequest | None = None):
        proposal = await run(assistant.accept, edit_id, bool(body and body.applied_by_editor))
        return {"edit_id": edit_id, "status": "accepted", "files": [c.path for c in proposal.changes]}

    @app.post("/edits/{edit_id}/reject")
    async def reject(edit_id: str):
        await run(assistant.reject, edit_id)
        return {"edit_id": edit_id, "status": "rejected"}

    @app.post("/undo")
    async def undo(body: UndoRequest):
        edit_id, proposal = await run(assistant.undo, body.session_id)
        return {"edit_id": edit_id, "status": "undone", "files": [c.path for c in proposal.changes]}

    completer = Completer(root, lambda: assistant.count_tokens, llm=assistant.llm, config=completions)
    app.state.completer = completer

    @app.post("/completions")
    async def complete(body: CompleteRequest, request: Request):
        async def hung_up() -> None:  # (request.is_disconnected() sees nothing through the guard middleware)
            while (await request.receive())["type"] != "http.disconnect":
                pass

        result = await until_closed(closing, lambda: completer.complete(body.request(), hung_up()))
        return result.to_json()

    @app.get("/completions/stats")
    async def completion_stats():
        return completer.stats.to_json()

    from corolla.assistant.agent.routes import add_agent_routes

    add_agent_routes(app, assistant)
    return app


def _edit_json(record) -> dict:
    proposal = record.proposal.get("proposal", {})
    return {"edit_id": record.id, "session_id": record.session_id, "status": record.status,
            "command": record.proposal.get("command"), "diff": proposal.get("diff", ""),
            "files": [c["path"] for c in proposal.get("changes", [])], "created": record.created,
            "updated": record.updated}


async def until_closed(closing: Closing, start):
    """Await ``start()``, unless ``closing`` closes first: then it is cancelled and _ShuttingDown raised."""
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    unregister = closing.add(lambda: loop.call_soon_threadsafe(closed.set))
    work, waiter = asyncio.ensure_future(start()), asyncio.ensure_future(closed.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise _ShuttingDown()
        return work.result()
    finally:
        unregister()
        waiter.cancel()
        work.cancel()


def _sse(first: dict, events, closing: Closing) -> SSEResponse:
    """The rest of ``events`` (a blocking iterator) pumped by a worker thread; closing the response
    (done, or the editor pressed Stop and hung up) closes the iterator, which stops the generation.
    A shutdown ends the stream at once with an error event; the thread is abandoned (daemon)."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(out.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody reads any more
            stop.set()

    def pump():
        try:
            for event in events:
                put(event)
                if stop.is_set():
                    break
        except errors.AssistantError as e:
            put({"type": "error", "error": {"type": e.code, "message": str(e)}})
        except Exception as e:  # noqa: BLE001 - reported to the editor, logged by the thread
            put({"type": "error", "error": {"type": type(e).__name__, "message": str(e)}})
            raise
        finally:
            events.close()
            put(None)

    worker = threading.Thread(target=pump, name="assistant-sse", daemon=True)
    worker.start()

    async def stream():
        while True:
            event = await out.get()
            if event is None:
                return
            yield f"data: {json.dumps(event)}\n\n"

    return SSEResponse(stream(), on_close=stop.set, closing=closing,
                       farewell=FAREWELL).prepend(f"data: {json.dumps(first)}\n\n")
