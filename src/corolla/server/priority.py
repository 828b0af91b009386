"""The server's compute thread: one worker, inference before training.

torch already uses every core for one request, so a server computes one thing at a time. Tasks
wait in a priority queue: inference steps (priority 0) go before training work (priority 1,
stateless forward and backward calls with trainable tensors), which is cut into a task per block
so that a waiting decode step never waits for more than one block of a training request.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future

INFERENCE, TRAINING = 0, 1


class PriorityExecutor(Executor):
    """A single-thread executor whose queue is ordered by priority, then arrival."""

    def __init__(self, thread_name: str = "corolla-compute"):
        self._queue: list[tuple[int, int, Future, Callable, tuple, dict]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._shutdown = False
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        return self.submit_with_priority(INFERENCE, fn, *args, **kwargs)

    def submit_with_priority(self, priority: int, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            heapq.heappush(self._queue, (priority, next(self._order), future, fn, args, kwargs))
            self._cv.notify()
        return future

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._shutdown:
                    self._cv.wait()
                if not self._queue:
                    return  # shut down and drained
                _, _, future, fn, args, kwargs = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 — handed to the waiting coroutine
                future.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cv:
            self._shutdown = True
            if cancel_futures:
                for _, _, future, *_ in self._queue:
                    future.cancel()
                self._queue.clear()
            self._cv.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
