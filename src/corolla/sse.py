"""Server-sent events that stop the generation behind them when the client goes away, and end
with an error event when the server shuts down.

Neutral: it depends on starlette and anyio only, never on another part of corolla, so both the
OpenAI-compatible API and the assistant's service stream through it (see tests/unit/test_layers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)


class Closing:
    """An app's shutdown switch: what is open (streams, generations) registers a callback, and
    :meth:`close` (called by the server that serves the app, such as :class:`corolla.api.server.ApiServer`,
    as it begins to shut down) calls
    them all, so every open request ends at once with an error instead of running on. Thread-safe;
    callbacks must not block (they set events, cancel flags)."""

    def __init__(self):
        self._closed = False
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register ``callback`` (called at once if already closed); returns its unregistration."""
        with self._lock:
            if not self._closed:
                key, self._next = self._next, self._next + 1
                self._callbacks[key] = callback
                return lambda: self._callbacks.pop(key, None)
        callback()
        return lambda: None

    def reopen(self) -> None:
        """Accept requests again (the app is served anew after a shutdown)."""
        with self._lock:
            self._closed = False

    def close(self) -> int:
        """Close everything registered (once); returns how many callbacks ran."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            callbacks, self._callbacks = list(self._callbacks.values()), {}
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the others must still be closed
                log.exception("closing an open request failed")
        return len(callbacks)


class SSEResponse(StreamingResponse):
    """``text/event-stream`` from an async iterator of ``data: ...\\n\\n`` strings.

    Whatever the ASGI server's spec version, it listens for the client's disconnect while
    streaming and calls ``on_close`` at the end in every case (done, disconnected, failed).
    With ``closing``, when it closes (the server shuts down) the stream stops at once, sends
    ``farewell`` (an error event in the endpoint's own format) and ends. Without, an app that sets
    ``app.state.sse_farewell`` gives its ``app.state.closing`` and that farewell to all its streams.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] | None = None, *,
                 closing: Closing | None = None, farewell: str = ""):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close
        self.closing, self.farewell = closing, farewell

    def prepend(self, first: str) -> SSEResponse:
        rest = self.body_iterator

        async def joined():
            yield first
            async for item in rest:
                yield item

        self.body_iterator = joined()
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        unregister = None
        closing, farewell = self.closing, self.farewell
        if closing is None:
            state = getattr(scope.get("app"), "state", None)
            farewell = getattr(state, "sse_farewell", "")
            closing = getattr(state, "closing", None) if farewell else None
        if closing is not None:
            loop = asyncio.get_running_loop()
            closed = asyncio.Event()
            unregister = closing.add(lambda: loop.call_soon_threadsafe(closed.set))
            self.body_iterator = _until(self.body_iterator, closed, farewell)
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we wrote
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            if unregister is not None:
                unregister()
            if self.on_close is not None:
                self.on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


async def _until(items: AsyncIterator[str], closed: asyncio.Event, farewell: str) -> AsyncIterator[str]:
    """``items`` until ``closed`` is set; then ``farewell`` and the end (``items`` is cancelled where it waits)."""
    waiter = asyncio.ensure_future(closed.wait())
    step: asyncio.Future | None = None
    try:
        while True:
            step = asyncio.ensure_future(items.__anext__())
            await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await step
                if farewell:
                    yield farewell
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
            if closed.is_set():  # closed while the item was being sent
                if farewell:
                    yield farewell
                return
    finally:
        waiter.cancel()
        if step is not None and not step.done():  # we were cancelled (the client left): so is the step
            step.cancel()
        else:
            close = getattr(items, "aclose", None)
            if close is not None:
                with contextlib.suppress(RuntimeError):
                    await close()
