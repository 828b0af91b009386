"""The OpenAI-compatible HTTP API: ``create_app(engine)`` for one model, ``create_app(catalogue=...)``
for every model of a swarm (:mod:`corolla.api.catalogue`).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /api/swarm`` (``{"models": [one swarm state per model]}``); the static pages of
``corolla/web`` at ``/`` when that folder exists. A request goes to the model its ``model`` field
names (an unknown one is a 404). Each model is served as its id and, for each LoRA adapter that an
online server of it hosts, as ``MODEL:NAME`` (routed only through servers hosting NAME; a NAME no
server hosts is a 404).
Each generation runs in its own thread (see :mod:`corolla.api.generation`); a streamed one is
cancelled, and its inference session closed, when the HTTP client goes away. When the server shuts
down (``app.state.closing``, closed by :class:`corolla.api.server.ApiServer`), every open request ends
at once: a stream with an error event (``server_shutting_down``), any other with a 503, and the
generations behind them stop at their next token.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from corolla.api import prompts
from corolla.api.catalogue import Catalogue, OneModel
from corolla.api.errors import APIError, bad_request, from_exception, from_validation, shutting_down
from corolla.api.generation import Delta, Engine, Failed, Generation, GenerationOptions, RepetitionLimits
from corolla.api.schemas import ChatCompletionRequest, CompletionRequest
from corolla.api.tools import call_prefill, parse_tool_calls
from corolla.sse import Closing, SSEResponse

log = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")  # as ServerInfo.adapters accepts (protocol.messages)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DEFAULT_MAX_TOKENS = 256
DISCONNECT_POLL_S = 0.25
DEFAULT_MAX_CONCURRENT = 16


def create_app(engine: Engine | None = None, *, catalogue: Catalogue | None = None, api_key: str | None = None,
               web_dir: Path | None = WEB_DIR, max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> FastAPI:
    """An app serving ``engine``, or the models of ``catalogue``; with ``api_key``, ``/v1`` wants
    ``Authorization: Bearer KEY``.

    At most ``max_concurrent`` generations run at once, all models together (each holds inference
    sessions on the swarm's servers); later requests wait in line for a slot.
    """
    if max_concurrent < 1:
        raise ValueError("max_concurrent must be at least 1")
    if (engine is None) == (catalogue is None):
        raise ValueError("give either an engine or a catalogue")
    catalogue = catalogue if catalogue is not None else OneModel(engine)
    app = FastAPI(title="corolla", summary="OpenAI-compatible API over a corolla swarm")
    app.state.catalogue = catalogue
    app.state.closing = closing = Closing()
    slots = threading.BoundedSemaphore(max_concurrent)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = from_validation(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        err = APIError(exc.status_code, str(exc.detail), type=kind, code=str(exc.status_code))
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (send `Authorization: Bearer KEY`)",
                           type="authentication_error", code="invalid_api_key")

    def check_model(name: str) -> tuple[str, str | None]:
        """(model id, hosted adapter) that ``name`` asks for ("MODEL" or "MODEL:NAME"); else a 404.
        Whether a server hosts NAME is routing's to say (a typed error, then a 404 as well)."""
        if catalogue.known(name):
            return name, None
        base, _, adapter = name.rpartition(":")
        if base and catalogue.known(base) and ADAPTER_NAME.match(adapter):
            return base, adapter
        served = ", ".join(repr(m) for m in catalogue.listed()) or "no model yet"
        raise APIError(404, f"the model {name!r} does not exist; this server serves {served} "
                            f"(and MODEL:ADAPTER for the adapters their servers host)",
                       type="invalid_request_error", param="model", code="model_not_found")

    def engine_for(name: str) -> tuple[Engine, str | None]:
        model_id, adapter = check_model(name)
        return catalogue.engine(model_id), adapter

    async def route(name: str) -> tuple[Engine, str | None]:
        """The engine and hosted adapter for a request's ``model``, found in a worker thread (it may
        read the DHT, and the first request for a model starts that model's client)."""
        return await run_in_threadpool(engine_for, name)

    def swarm_states() -> list[dict]:
        try:
            return catalogue.swarm()
        except Exception as e:  # the DHT may fail a read: the models themselves are still listed
            log.warning("reading the swarm's state failed: %s: %s", type(e).__name__, e)
            return []

    def hosted_adapters(states: list[dict], model_id: str) -> list[str]:
        """Adapters that some online server of ``model_id`` announces (the catalogue's cached swarm state)."""
        servers = [s for state in states if state.get("model_id") == model_id for s in state.get("servers", [])]
        return sorted({a for s in servers if s.get("state") == "online" for a in s.get("adapters", ())})

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def list_models() -> dict:
        states = swarm_states()
        names = [name for model_id in catalogue.listed()
                 for name in (model_id, *(f"{model_id}:{a}" for a in hosted_adapters(states, model_id)))]
        return {"object": "list", "data": [_model_card(name) for name in names]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    def get_model(name: str) -> dict:
        model_id, adapter = check_model(name)
        if adapter is not None and adapter not in hosted_adapters(swarm_states(), model_id):
            raise APIError(404, f"the model {name!r} does not exist: no server of {model_id} hosts adapter "
                                f"{adapter!r}", type="invalid_request_error", param="model", code="model_not_found")
        return _model_card(name)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        engine, adapter = await route(body.model)
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
        choice = body.tool_choice
        if choice is not None and not isinstance(choice, str):
            choice = choice.name
            if choice not in {t["function"]["name"] for t in tools}:
                raise bad_request(f"tool_choice names {choice!r}, which is not in tools", param="tool_choice")
        if choice == "required" and not tools:
            raise bad_request("tool_choice 'required' needs tools", param="tool_choice")
        try:
            messages = [{"role": m.role, "content": m.text(),
                         "tool_calls": [c.model_dump() for c in m.tool_calls or []]} for m in body.messages]
        except ValueError as e:
            raise bad_request(str(e), param="messages") from None
        text = prompts.render_chat(engine.tokenizer, messages, tools or None, choice)
        prefill = _prefill(tools, choice)
        job = _Job(engine, text, body, request, closing, slots, adapter=adapter)
        known = {t["function"]["name"] for t in tools} if tools and choice != "none" else set()
        if body.stream and not known:
            return await job.stream_chat()
        content, finish, used = await job.collect()
        message: dict = {"role": "assistant", "content": content}
        if known:
            parsed_content, calls = parse_tool_calls(prefill + content, known)
            if calls:
                message = {"role": "assistant", "content": parsed_content,
                           "tool_calls": [c.to_openai() for c in calls]}
                finish = "tool_calls"
        if body.stream:  # tools: the reply is parsed whole, then sent as one chunk
            return job.replay_chat(message, finish, used)
        return {"id": job.id, "object": "chat.completion", "created": job.created, "model": body.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": used}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        engine, adapter = await route(body.model)
        extra: tuple[str, ...] = ()
        if body.suffix is not None:
            if body.echo:
                raise bad_request("echo cannot be combined with suffix", param="echo")
            text, fim = prompts.fim_prompt(engine.tokenizer, body.prompt, body.suffix)
            extra = fim.extra_stops
        else:
            text = body.prompt
        job = _Job(engine, text, body, request, closing, slots, extra_stops=extra, templated=body.suffix is not None,
                   adapter=adapter)
        if body.stream:
            return await job.stream_completion(echo=body.prompt if body.echo else "")
        content, finish, used = await job.collect()
        if body.echo:
            content = body.prompt + content
        return {"id": job.id, "object": "text_completion", "created": job.created, "model": body.model,
                "choices": [{"index": 0, "text": content, "finish_reason": finish, "logprobs": None}],
                "usage": used}

    @app.get("/api/swarm")
    def swarm() -> dict:
        return {"models": catalogue.swarm()}

    if web_dir is not None and web_dir.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app


def _prefill(tools: list[dict], choice: str | None) -> str:
    """The start of the reply that render_chat put in the prompt (a forced tool call)."""
    forced = choice if tools and choice not in (None, "auto", "none") else None
    return call_prefill(forced)


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "corolla"}


class _Job:
    """One request's generation: prompt tokens, options, and its answer (whole or streamed)."""

    def __init__(self, engine: Engine, prompt: str, body, request: Request, closing: Closing,
                 slots: threading.Semaphore | None = None, *, extra_stops: tuple[str, ...] = (),
                 templated: bool = True, adapter: str | None = None):
        if closing.closed:
            raise shutting_down()
        self.engine, self.body, self.request, self.closing, self.slots = engine, body, request, closing, slots
        self.id = f"{'chatcmpl' if isinstance(body, ChatCompletionRequest) else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        # chat templates and FIM prompts carry their own special tokens; a raw prompt gets the tokenizer's
        self.prompt_ids = engine.encode(prompt, add_special_tokens=not templated)
        limit = engine.max_context()
        default = DEFAULT_MAX_TOKENS if limit is None else max(1, min(DEFAULT_MAX_TOKENS, limit - len(self.prompt_ids)))
        max_tokens = body.token_limit(default)
        if limit is not None and len(self.prompt_ids) + max_tokens > limit:
            raise APIError(400, f"the prompt ({len(self.prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds "
                                f"the model's context of {limit} tokens", param="max_tokens",
                           code="context_length_exceeded")
        self.options = GenerationOptions(max_tokens=max_tokens, temperature=body.temperature,
                                         top_p=body.top_p if body.top_p < 1.0 else None, seed=body.seed,
                                         extra_stops=extra_stops, adapter=adapter,
                                         repetition=None if body.repetition_stop else RepetitionLimits(enabled=False))

    def usage(self, completion_tokens: int) -> dict:
        n = len(self.prompt_ids)
        return {"prompt_tokens": n, "completion_tokens": completion_tokens, "total_tokens": n + completion_tokens}

    def start(self) -> tuple[Generation, Callable[[], None]]:
        """A generation, and what to call once it is over (it is aborted if the server shuts down first)."""
        gen = Generation(self.engine, self.prompt_ids, self.options, self.body.stop_list(), self.slots)
        unregister = self.closing.add(lambda: gen.abort(shutting_down()))

        def done() -> None:
            gen.cancel.set()  # no-op once done; stops the thread if the request ended early
            unregister()

        return gen, done

    async def collect(self) -> tuple[str, str, dict]:
        """The whole answer: (text, finish_reason, usage). Cancelled if the client goes away."""
        gen, done = self.start()
        parts: list[str] = []
        try:
            while True:
                try:
                    event = await gen.next(DISCONNECT_POLL_S)
                except TimeoutError:
                    if await self.request.is_disconnected():
                        gen.cancel.set()
                    continue
                if isinstance(event, Delta):
                    parts.append(event.text)
                elif isinstance(event, Failed):
                    raise from_exception(event.error)
                else:
                    return "".join(parts), event.finish_reason, self.usage(event.completion_tokens)
        finally:
            done()

    async def _first(self, gen: Generation):
        """Wait for the first event so that a failure (e.g. no route) is still an HTTP error."""
        event = await gen.next()
        if isinstance(event, Failed):
            raise from_exception(event.error)
        return event

    def _sse(self, gen: Generation, done: Callable[[], None], first, chunk, final_chunk) -> SSEResponse:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)

        async def events():
            event = first
            while True:
                if isinstance(event, Delta):
                    yield _data(chunk(event.text))
                elif isinstance(event, Failed):
                    yield _data(from_exception(event.error).body())
                    break
                else:
                    yield _data(final_chunk(event.finish_reason))
                    if include_usage:
                        yield _data({**chunk(None), "choices": [], "usage": self.usage(event.completion_tokens)})
                    break
                event = await gen.next()
            yield "data: [DONE]\n\n"

        return SSEResponse(events(), on_close=done)  # a shutdown aborts gen: the stream ends with its error

    async def _started(self) -> tuple[Generation, Callable[[], None], object]:
        """A running generation, its ``done`` and its first event (a failure before it is an HTTP error)."""
        gen, done = self.start()
        try:
            return gen, done, await self._first(gen)
        except BaseException:
            done()
            raise

    async def stream_chat(self) -> SSEResponse:
        gen, done, first = await self._started()
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.body.model}

        def chunk(text: str | None, role: bool = False) -> dict:
            delta = {} if text is None else {"content": text}
            if role:
                delta["role"] = "assistant"
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]}

        def final(reason: str) -> dict:
            return {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason, "logprobs": None}]}

        response = self._sse(gen, done, first, chunk, final)
        opening = _data(chunk("", role=True))
        return response.prepend(opening)

    def replay_chat(self, message: dict, finish: str, used: dict) -> SSEResponse:
        """A finished chat answer (with tool calls) as a stream of one chunk."""
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.body.model}
        delta = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)

        async def events():
            yield _data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]})
            yield _data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}]})
            if include_usage:
                yield _data({**base, "choices": [], "usage": used})
            yield "data: [DONE]\n\n"

        return SSEResponse(events())

    async def stream_completion(self, echo: str = "") -> SSEResponse:
        gen, done, first = await self._started()
        base = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.body.model}

        def chunk(text: str | None) -> dict:
            return {**base, "choices": [{"index": 0, "text": text or "", "finish_reason": None, "logprobs": None}]}

        def final(reason: str) -> dict:
            return {**base, "choices": [{"index": 0, "text": "", "finish_reason": reason, "logprobs": None}]}

        response = self._sse(gen, done, first, chunk, final)
        return response.prepend(_data(chunk(echo))) if echo else response


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
