"""Server-sent events that stop the generation behind them when the client goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class SSEResponse(StreamingResponse):
    """``text/event-stream`` from an async iterator of ``data: ...\\n\\n`` strings.

    Whatever the ASGI server's spec version, it listens for the client's disconnect while
    streaming and calls ``on_close`` at the end in every case (done, disconnected, failed).
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] | None = None):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    def prepend(self, first: str) -> SSEResponse:
        rest = self.body_iterator

        async def joined():
            yield first
            async for item in rest:
                yield item

        self.body_iterator = joined()
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            if self.on_close is not None:
                self.on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
