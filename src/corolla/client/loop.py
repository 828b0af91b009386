"""A background asyncio loop that the synchronous client API submits coroutines to."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "corolla-client"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel what is still running (streams, transport readers), then stop the loop; at most
        about ``timeout_s`` in all (a task that ignores cancellation is left behind)."""
        if not self.loop.is_running():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        deadline = time.monotonic() + timeout_s
        try:
            self.run(cancel_all(), timeout=timeout_s / 2)
        except Exception:  # timed out: stop the loop anyway
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if not self._thread.is_alive():
                self.loop.close()
