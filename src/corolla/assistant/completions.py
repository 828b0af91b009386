"""Completions as you type: fill-in-the-middle on the assistant's model, for an editor's ghost text.

The editor sends the text before and after the cursor (``prefix``, ``suffix``), the file's path and
language and its open tabs. :class:`Completer` then

1. plans the shape (:func:`plan`): one line, or a block where the syntax asks for one (an empty block
   after a line that opens it: ``:`` in Python, ``{`` ``(`` ``[`` anywhere); nothing when the cursor
   is inside a word or before code on its line;
2. builds the prompt (:func:`build_prompt`): a suffix window and a prefix window around the cursor
   plus a few snippets, within a token budget (small for a line: the prefill is what the first ghost
   text waits for) counted with the model's tokenizer when the assistant has it. Snippets are the
   definitions of identifiers used near the cursor, found in the current file (outside the windows),
   the open tabs and the repo map's best files; they go at the top of the prefix as comments, since
   the endpoint's ``/v1/completions`` takes a plain prefix and suffix;
3. streams the middle from the endpoint's ``/v1/completions`` with ``suffix``, and closes the stream
   as soon as the text is complete (:class:`Cutter`: the end of the line, or the first line that
   leaves the block), so the swarm stops generating;
4. trims what repeats the suffix (:func:`finish`).

A request the editor gives up on (the user typed on: it aborts the HTTP request) cancels the coroutine,
which closes the HTTP stream to the endpoint; the endpoint then stops the generation and closes its
server sessions. A newer request for the same file supersedes an older one still running. Finished
completions are kept in a small LRU cache keyed by the exact prompt.

The pure parts (the shape, the prompt within its budget, cutting and cleaning the middle) are in
:mod:`corolla.assistant.fim`; this module is the service around them: finding the snippets, the
endpoint's stream, the cache and superseding.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from corolla.assistant.context.budget import Counter
from corolla.assistant.context.files import list_files
from corolla.assistant.context.ranking import Signals, import_fragments, imported_files
from corolla.assistant.context.repomap import rank_files
from corolla.assistant.context.symbols import Symbol, file_symbols
from corolla.assistant.errors import AssistantError, EndpointError
from corolla.assistant.fim import (
    CompletionConfig,
    Cutter,
    FimPrompt,
    Snippet,
    build_prompt,
    definition_text,
    finish,
    line_stops,
    near_identifiers,
    normalize_language,
    plan,
)
from corolla.assistant.workspace import normalize, show_text

logger = logging.getLogger(__name__)


# ---- requests and results --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    prefix: str
    suffix: str = ""
    path: str | None = None  # workspace-relative, None for an untitled document
    language: str | None = None  # VS Code's language id; else from the path
    open_files: tuple[str, ...] = ()
    buffers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # unsaved texts by path
    multiline: bool | None = None  # None: decided from the syntax


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    multiline: bool
    reason: str  # why one line or a block (or why none)
    # end_of_line | comment | block_end | max_lines | stop | length | skipped | empty | cancelled | superseded
    finish_reason: str
    prompt_tokens: int = 0
    snippets: tuple[str, ...] = ()
    cached: bool = False
    first_token_s: float | None = None  # from the request to the first streamed text
    total_s: float = 0.0

    def to_json(self) -> dict:
        return {"completion": self.text, "multiline": self.multiline, "reason": self.reason,
                "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "snippets": list(self.snippets), "cached": self.cached,
                "first_token_s": None if self.first_token_s is None else round(self.first_token_s, 4),
                "total_s": round(self.total_s, 4)}


# the endpoint's stream: (fim prompt, api parameters) -> text pieces; closing it stops the generation
Upstream = Callable[[FimPrompt, dict], AsyncIterator[str]]


class EndpointStream:
    """Streams ``/v1/completions`` with ``suffix`` from the assistant's OpenAI-compatible endpoint
    (the official ``openai`` client's async side); a cancelled or closed stream closes its HTTP
    connection, which stops the generation behind it."""

    def __init__(self, llm):
        self.llm = llm
        self._client = None

    async def __call__(self, prompt: FimPrompt, params: dict) -> AsyncIterator[str]:
        import openai

        if self._client is None:
            config = self.llm.config
            self._client = openai.AsyncOpenAI(base_url=config.endpoint, api_key=config.api_key,
                                              timeout=config.timeout_s, max_retries=0)
        model = await asyncio.to_thread(lambda: self.llm.model)  # the first call may ask the endpoint
        endpoint = self.llm.config.endpoint
        try:
            stream = await self._client.completions.create(model=model, prompt=prompt.prefix, suffix=prompt.suffix,
                                                           stream=True, **params)
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].text:
                        yield chunk.choices[0].text
        except openai.APIConnectionError as e:
            raise EndpointError(f"cannot reach the model endpoint {endpoint} ({e}); start one with `make run` "
                                f"or `corolla api`, or pass --endpoint URL") from None
        except openai.APIStatusError as e:
            raise EndpointError(f"the model endpoint {endpoint} answered {e.status_code}: {_message(e)}") from None
        except openai.APIError as e:  # an error event in the stream (the endpoint shuts down)
            raise EndpointError(f"the model endpoint {endpoint} stopped the completion: {_message(e)}") from None


def _message(error) -> str:
    body = getattr(error, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, dict) and inner.get("message"):
        return str(inner["message"])
    return str(error)


@dataclasses.dataclass
class CompletionStats:
    requests: int = 0
    completed: int = 0
    cached: int = 0
    skipped: int = 0
    cancelled: int = 0  # the editor hung up before the answer
    superseded: int = 0  # a newer request for the same file came first
    failed: int = 0
    upstream_open: int = 0  # streams to the endpoint open right now

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Completer:
    """Completions for one workspace (see the module's docstring). ``counter()`` gives the token counter
    (called in a worker thread: it may ask the endpoint for the model's name); ``upstream`` the
    endpoint's stream (default :class:`EndpointStream` over ``llm``)."""

    def __init__(self, root: Path, counter: Callable[[], Counter], *, llm=None, upstream: Upstream | None = None,
                 config: CompletionConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 files: Callable[[Path], list[str]] = list_files):
        if upstream is None and llm is None:
            raise ValueError("give the llm or an upstream stream")
        self.root = Path(root).resolve()
        self.config = config or CompletionConfig()
        self.counter = counter
        self.upstream: Upstream = upstream if upstream is not None else EndpointStream(llm)
        self.clock = clock
        self.stats = CompletionStats()
        self._list_files = files
        self._files: tuple[float, list[str]] | None = None
        self._files_lock = threading.Lock()
        self._cache: OrderedDict[tuple, tuple[str, str]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task] = {}
        self._symbols: OrderedDict[tuple, tuple[Symbol, ...]] = OrderedDict()
        self._starts: OrderedDict[tuple[str, bool], int] = OrderedDict()  # (path, block) -> its window's first line

    # --- the service's entry point ------------------------------------------------------------
    async def complete(self, request: CompletionRequest, hung_up: Awaitable[object] | None = None) -> Completion:
        """The completion for ``request``; cancelled (``finish_reason`` "cancelled") as soon as ``hung_up``
        completes (the editor closed the connection), "superseded" when a newer request for the same
        file arrives first. Either way the stream to the endpoint is closed."""
        start = self.clock()
        self.stats.requests += 1
        key = request.path or ""
        task = asyncio.ensure_future(self._complete(request, start))
        watcher = asyncio.ensure_future(hung_up) if hung_up is not None else None
        previous = self._inflight.get(key)
        if previous is not None and not previous.done():
            previous.cancel()
        self._inflight[key] = task
        try:
            await asyncio.wait({task} | ({watcher} if watcher else set()), return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # the editor hung up first
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.stats.cancelled += 1
                return Completion("", False, "the editor gave up on it", "cancelled", total_s=self.clock() - start)
            if task.cancelled():
                self.stats.superseded += 1
                return Completion("", False, "a newer request for the file came", "superseded",
                                  total_s=self.clock() - start)
            try:
                return task.result()
            except AssistantError:
                self.stats.failed += 1
                raise
        finally:
            if self._inflight.get(key) is task:
                del self._inflight[key]
            if not task.done():  # the handler itself was cancelled (the service shuts down)
                task.cancel()
            if watcher is not None:
                watcher.cancel()

    async def _complete(self, request: CompletionRequest, start: float) -> Completion:
        language = normalize_language(request.language, request.path)
        shape = plan(request.prefix, request.suffix, language, multiline=request.multiline)
        if shape.skip:
            self.stats.skipped += 1
            return Completion("", False, shape.reason, "skipped", total_s=self.clock() - start)
        prompt = await asyncio.to_thread(self.prompt, request, shape.multiline)
        max_tokens = self.config.multi_line_tokens if shape.multiline else self.config.single_line_tokens
        params: dict = {"max_tokens": max_tokens, "temperature": self.config.temperature}
        if not shape.multiline:
            params["stop"] = line_stops(language)
        labels = tuple(s.label for s in prompt.snippets)
        key = (prompt.prefix, prompt.suffix, shape.multiline, max_tokens, self.config.temperature)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats.cached += 1
            return Completion(hit[0], shape.multiline, shape.reason, hit[1], prompt.tokens, labels, cached=True,
                              total_s=self.clock() - start)
        cutter = Cutter(shape, request.prefix, request.suffix, self.config.multi_line_lines)
        first: float | None = None
        self.stats.upstream_open += 1
        try:
            pieces = self.upstream(prompt, params)
            async with contextlib.aclosing(pieces):  # closed at once when cut, cancelled or failed
                async for piece in pieces:
                    if first is None:
                        first = self.clock() - start
                    if cutter.push(piece):
                        break
        finally:
            self.stats.upstream_open -= 1
        finish_reason = cutter.reason or "stop"
        text = finish(cutter.text, shape, request.prefix, request.suffix)
        if not text:
            finish_reason = "empty"
        self._cache[key] = (text, finish_reason)
        while len(self._cache) > self.config.cache_entries:
            self._cache.popitem(last=False)
        self.stats.completed += 1
        return Completion(text, shape.multiline, shape.reason, finish_reason, prompt.tokens, labels,
                          first_token_s=first, total_s=self.clock() - start)

    # --- the prompt (a worker thread: tokenising, parsing, listing files) -------------------------
    def prompt(self, request: CompletionRequest, block: bool = False) -> FimPrompt:
        """The FIM prompt; the prefix window keeps the start it had in the file's last prompt while that
        fits (see :func:`build_prompt`'s ``start_line``: the API's prompt cache then reuses it)."""
        language = normalize_language(request.language, request.path)
        count = self.counter()
        key = (request.path or "", block)
        with self._files_lock:
            start = self._starts.get(key)
        prompt = build_prompt(request.prefix, request.suffix, count, self.config,
                              lambda first: self.snippets(request, language, first), language, block, start)
        with self._files_lock:
            self._starts.pop(key, None)
            self._starts[key] = prompt.first_line
            while len(self._starts) > 64:
                self._starts.popitem(last=False)
        return prompt

    def _buffer_symbols(self, rel: str, text: str) -> tuple[Symbol, ...]:
        """The symbols of the current file's text (parsed once per text: typing re-asks often)."""
        key = (rel, len(text), hash(text))
        with self._files_lock:
            hit = self._symbols.get(key)
        if hit is None:
            hit = file_symbols(self.root, rel, text)
            with self._files_lock:
                self._symbols[key] = hit
                while len(self._symbols) > 8:
                    self._symbols.popitem(last=False)
        return hit

    def workspace_files(self) -> list[str]:
        with self._files_lock:
            now = self.clock()
            if self._files is None or now - self._files[0] > self.config.files_ttl_s:
                self._files = (now, self._list_files(self.root))
            return self._files[1]

    def snippets(self, request: CompletionRequest, language: str | None, first_visible: int) -> list[Snippet]:
        """Definitions of the identifiers used near the cursor, the closest identifier first: from the
        current file (above the prefix window), the open tabs, then the repo map's best files."""
        wanted = near_identifiers(request.prefix, request.suffix, self.config.near_lines)
        if not wanted:
            return []
        rank = {name: i for i, name in enumerate(wanted)}
        current = normalize(self.root, request.path)[0] if request.path else None
        found: dict[str, Snippet] = {}
        settled: set[str] = set()  # names with a snippet, or defined in the window (the model sees them)

        def take(rel: str, text: str | None, symbols: Sequence[Symbol], visible: Callable[[int], bool]) -> None:
            if text is None:
                return
            lines = text.split("\n")
            for s in symbols:
                if s.name not in rank or s.name in settled:
                    continue
                settled.add(s.name)
                if not visible(s.line):
                    body = definition_text(lines, s, symbols, self.config.snippet_lines)
                    if body.strip():
                        found[s.name] = Snippet(rel, s.line, s.name, body)

        whole = request.prefix + request.suffix
        if current is not None:
            take(current, whole, self._buffer_symbols(current, whole), lambda line: line >= first_visible)
        opened = []
        for path in request.open_files:
            rel, _ = normalize(self.root, path)
            if rel is None or rel == current or rel in opened:
                continue
            opened.append(rel)
            buffer = request.buffers.get(path, request.buffers.get(rel))
            text = buffer if buffer is not None else show_text(self.root, rel)[0]
            take(rel, text, file_symbols(self.root, rel, buffer), lambda line: False)
        missing = [n for n in wanted if n not in settled]
        if missing and self.config.repo_map and current is not None:
            files = self.workspace_files()
            signals = Signals(current_idents=frozenset(missing), current_file=current, open_files=frozenset(opened),
                              imported=frozenset(imported_files(import_fragments(current, whole), files)))
            for ranked in rank_files(self.root, files, signals, request.buffers, exclude={current, *opened},
                                     max_parse=self.config.repo_parse, deadline_s=self.config.repo_deadline_s):
                if not any(s.name in rank and s.name not in settled for s in ranked.symbols):
                    continue
                text, _ = show_text(self.root, ranked.path, request.buffers)
                take(ranked.path, text, ranked.symbols, lambda line: False)
                if len(found) >= self.config.max_snippets * 2:
                    break
        return sorted(found.values(), key=lambda s: (rank[s.name], s.path, s.line))
