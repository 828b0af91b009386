"""One generation in a worker thread, bridged to the event loop.

The thread drives the engine's token stream and cuts stop sequences; the event loop receives
:class:`Delta`, then :class:`Done` or :class:`Failed`. Setting ``cancel`` stops the thread
between tokens; it then closes the engine's stream (and with it the inference session).
:meth:`Generation.abort` also ends the event loop's side at once, whatever the thread is waiting on
(the server shuts down).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float | None = None
    seed: int | None = None
    extra_stops: tuple[str, ...] = ()  # special tokens that end generation besides EOS
    adapter: str | None = None  # a server-hosted LoRA adapter by name (the API's model "MODEL:NAME")


class Engine(Protocol):
    """What the app needs from a model (see :class:`corolla.api.engine.SwarmEngine`)."""

    model_id: str
    tokenizer: object

    def max_context(self) -> int | None: ...

    def encode(self, text: str, add_special_tokens: bool) -> list[int]: ...

    def stream(self, prompt_ids: list[int], options: GenerationOptions) -> Iterator[str]:
        """The text of each new token (one item per token) until EOS or ``options.max_tokens``."""
        ...

    def swarm_status(self) -> dict: ...


class StopScanner:
    """Cuts text at the first stop sequence, holding back what could be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop sequence was reached)."""
        text = self._held + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclasses.dataclass(frozen=True)
class Delta:
    text: str


@dataclasses.dataclass(frozen=True)
class Done:
    finish_reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Delta | Done | Failed


def run_generation(engine: Engine, prompt_ids: list[int], options: GenerationOptions, stops: list[str],
                   cancel: threading.Event, emit: Callable[[Event], None],
                   slots: threading.Semaphore | None = None) -> None:
    """Generate (in the calling thread), emitting events; always ends with Done or Failed.

    With ``slots``, first wait for one (requests past the server's limit queue up; a request
    cancelled while it waits never starts).
    """
    if slots is not None:
        while not slots.acquire(timeout=0.1):
            if cancel.is_set():
                emit(Done("cancelled", 0))
                return
    try:
        _generate(engine, prompt_ids, options, stops, cancel, emit)
    finally:
        if slots is not None:
            slots.release()


def _generate(engine: Engine, prompt_ids: list[int], options: GenerationOptions, stops: list[str],
              cancel: threading.Event, emit: Callable[[Event], None]) -> None:
    scanner = StopScanner(stops)
    count, finish = 0, None
    try:
        with contextlib.closing(engine.stream(prompt_ids, options)) as tokens:
            for delta in tokens:
                count += 1
                text, hit = scanner.push(delta)
                if text:
                    emit(Delta(text))
                if hit:
                    finish = "stop"
                    break
                if cancel.is_set():
                    finish = "cancelled"
                    break
        if finish is None:
            finish = "length" if count >= options.max_tokens else "stop"
            tail = scanner.flush()
            if tail:
                emit(Delta(tail))
    except BaseException as e:  # handed to the event loop, which answers the HTTP client
        emit(Failed(e))
        return
    emit(Done(finish, count))


class Generation:
    """A generation started in its own thread; iterate its events on the event loop."""

    def __init__(self, engine: Engine, prompt_ids: list[int], options: GenerationOptions, stops: list[str],
                 slots: threading.Semaphore | None = None):
        self.cancel = threading.Event()
        self._aborted = False
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._thread = threading.Thread(target=run_generation, name="corolla-api-generation", daemon=True,
                                        args=(engine, prompt_ids, options, stops, self.cancel, self._emit, slots))
        self._thread.start()

    def _emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancel.set()

    def _put(self, event: Event) -> None:
        if not self._aborted:
            self._queue.put_nowait(event)

    def abort(self, error: BaseException) -> None:
        """Stop the thread (at its next token) and end the events now with ``Failed(error)``: what
        is still queued is dropped, what the thread emits later is ignored. Thread-safe."""
        self.cancel.set()

        def fail() -> None:
            if self._aborted:
                return
            self._aborted = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(Failed(error))

        try:
            self._loop.call_soon_threadsafe(fail)
        except RuntimeError:  # the event loop is gone: nobody waits for the events any more
            pass

    async def next(self, timeout_s: float | None = None) -> Event:
        """The next event; raises TimeoutError after ``timeout_s``."""
        if timeout_s is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout_s)
