"""One generation in a worker thread, bridged to the event loop.

The thread drives the engine's token stream, cuts stop sequences and stops a degenerate repetition
loop (:class:`RepetitionStop`); the event loop receives
:class:`Delta`, then :class:`Done` or :class:`Failed`. Setting ``cancel`` stops the thread
between tokens; it then throws :class:`GenerationCancelled` into the engine's stream (which closes
the inference session rather than keeping it for the next prompt).
:meth:`Generation.abort` also ends the event loop's side at once, whatever the thread is waiting on
(the server shuts down).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float | None = None
    seed: int | None = None
    extra_stops: tuple[str, ...] = ()  # special tokens that end generation besides EOS
    adapter: str | None = None  # a server-hosted LoRA adapter by name (the API's model "MODEL:NAME")
    repetition: RepetitionLimits | None = None  # None: RepetitionLimits(); RepetitionLimits(enabled=False): off


class GenerationCancelled(Exception):
    """Thrown into an engine's token stream when its client hung up: the engine frees what the
    generation held (a stream merely closed ended normally, e.g. at a stop sequence, and an engine may
    keep its session for the next prompt)."""


@dataclasses.dataclass(frozen=True)
class RepetitionLimits:
    """When a generation counts as stuck in a loop: its last tokens are one cycle of ``period`` tokens
    (1 <= period <= ``max_period``) over and over, the periodic tail spanning at least ``min_repeats``
    cycles and at least ``min_tokens`` tokens (the first cycle included).

    The thresholds were measured on legitimate code. Tokenised with Qwen2.5's tokenizer, 43 M tokens of
    Python (CPython 3.11's ``Lib/`` and a site-packages of numpy, scipy, sympy...: 13,352 files) hold a
    tail like that of 200 tokens or more in 16 files, every one a data literal (test matrices, parser
    tables, encoded test strings); at 128 tokens 34 files, at 100, 44. Repeated short lines, ``----``
    rules (a few tokens: runs of dashes are single tokens) and arrays of up to about 100 zeros pass.
    A model's loop (one token, one line, one sentence over and over) is cut once it has run for 200
    tokens (3 cycles of a cycle longer than 66): seconds on a CPU swarm, not the minutes to the token
    limit. A request turns it off with ``"repetition_stop": false`` (for long repetitive data).
    """

    enabled: bool = True
    max_period: int = 128
    min_repeats: int = 3
    min_tokens: int = 200

    def __post_init__(self):
        if self.max_period < 1 or self.min_repeats < 2 or self.min_tokens < 2:
            raise ValueError("repetition limits: max_period >= 1, min_repeats >= 2 and min_tokens >= 2")


class RepetitionStop:
    """Incremental loop detector over a generation's tokens (any hashable per token: ids or texts).

    ``runs[p]`` is how many of the last tokens each equal the token ``p`` before them, so the tail that
    is periodic with period ``p`` spans ``runs[p] + p`` tokens. Each :meth:`push` costs O(max_period).
    """

    def __init__(self, limits: RepetitionLimits):
        self.limits = limits
        self._ring: list = [None] * limits.max_period  # the last max_period tokens; the next goes at _pos
        self._pos = self._seen = 0
        self._runs = [0] * (limits.max_period + 1)  # index 0 unused
        self.period: int | None = None  # the loop's period once one was found
        self.span = 0  # and how many of the last tokens repeat it (the first cycle included)

    def push(self, token) -> bool:
        """Add the next token; True when the tail is now a loop (``period`` and ``span`` say which)."""
        limits, ring, runs, size = self.limits, self._ring, self._runs, self.limits.max_period
        found = None
        for p in range(1, min(self._seen, size) + 1):
            if ring[(self._pos - p) % size] == token:
                run = runs[p] = runs[p] + 1
                span = run + p
                if found is None and span >= limits.min_tokens and span >= limits.min_repeats * p:
                    found = (p, span)
            else:
                runs[p] = 0
        ring[self._pos] = token
        self._pos = (self._pos + 1) % size
        self._seen += 1
        if found is not None:
            self.period, self.span = found
            return True
        return False


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
    finish_reason: str  # "stop" (EOS, a stop sequence or a repetition loop) | "length" | "cancelled"
    completion_tokens: int
    looped: bool = False  # stopped because the tokens became a repetition loop


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
    limits = options.repetition or RepetitionLimits()
    loops = RepetitionStop(limits) if limits.enabled else None
    count, finish, looped = 0, None, False
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
                if loops is not None and loops.push(delta):
                    # what was streamed cannot be taken back, so nothing is trimmed: the answer, streamed or
                    # not, is what was generated up to here (the text the scanner held back included)
                    log.info("generation stopped after %d tokens: the last %d repeat a cycle of %d tokens",
                             count, loops.span, loops.period)
                    looped = True
                    break
            if finish == "cancelled" and hasattr(tokens, "throw"):
                with contextlib.suppress(GenerationCancelled, StopIteration):
                    tokens.throw(GenerationCancelled())
        if finish is None:
            finish = "length" if count >= options.max_tokens and not looped else "stop"
            tail = scanner.flush()
            if tail:
                emit(Delta(tail))
    except BaseException as e:  # handed to the event loop, which answers the HTTP client
        emit(Failed(e))
        return
    emit(Done(finish, count, looped))


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
