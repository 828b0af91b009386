"""Stopping a long-running command within a deadline of SIGTERM (or Ctrl-C), whatever it is doing.

Every long-running command (``corolla api``, ``server``, ``dht``, ``swarm up``, ``assistant serve``,
agent runners) stops in order when asked: its clients get an error, its sessions are closed, the
processes it started are stopped. Each step of that is bounded, and :data:`STOP` guarantees the
rest: once a stop was requested the process is gone :data:`DEADLINE_S` later even if some step hangs
(a thread blocked on a dead peer, a child that ignores SIGTERM). It then logs what it abandoned (the
threads still running and where), kills the processes it started and exits.

A command installs its handlers with :func:`on_stop_signals` (after forking any child that must not
inherit them, such as hivemind's DHT process) and, once its orderly stop is done, leaves through
:func:`start_exit_fuse`, so that it does not wait for threads stuck on remote calls (Python cannot stop them;
a non-daemon one would otherwise keep the process alive).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DEADLINE_S = 9.0  # DESIGN: every long-running process stops within 10 s of SIGTERM
LEFTOVER_JOIN_S = 1.0  # at exit, how long Python may wait for threads that are still running
WATCHDOG_EXIT_CODE = 70  # EX_SOFTWARE: the orderly stop did not finish in time

_kept: set[int] = set()  # pids of detached children that outlive us on purpose (background agents)


def keep_on_exit(pid: int) -> None:
    """``pid`` (and its descendants) is meant to outlive this process: the watchdog spares it."""
    _kept.add(pid)


class Stop:
    """A stop request and its deadline (see the module's docstring). Thread-safe; one per process."""

    def __init__(self, deadline_s: float = DEADLINE_S):
        self.deadline_s = deadline_s
        self.requested_at: float | None = None
        self.reason = ""
        self._event = threading.Event()
        self._lock = threading.RLock()  # re-entrant: request() may run in a signal handler
        self._watchdog: threading.Thread | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._event.wait(timeout_s)

    def remaining(self, margin_s: float = 0.0) -> float:
        """Seconds left before the deadline (minus ``margin_s``); the whole deadline while not requested."""
        if self.requested_at is None:
            return self.deadline_s - margin_s
        return max(0.0, self.deadline_s - (time.monotonic() - self.requested_at) - margin_s)

    def on_request(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a stop is requested (at once if it already was). It may run in a
        signal handler: it must only set flags or events, never block."""
        with self._lock:
            if not self.requested:
                self._callbacks.append(callback)
                return
        callback()

    def request(self, reason: str = "stop requested") -> None:
        """Ask for a stop: run the callbacks once and start the deadline's watchdog."""
        with self._lock:
            if self.requested:
                return
            self.requested_at = time.monotonic()
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
            self._watchdog = threading.Thread(target=self._watch, name="corolla-stop-watchdog", daemon=True)
            self._watchdog.start()
        log.info("%s: stopping (the process exits within %.0f s)", reason, self.deadline_s)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one broken callback must not keep the others from running
                log.exception("a stop callback failed")

    def _watch(self) -> None:
        time.sleep(self.remaining())
        abandon(f"still running {self.deadline_s:.0f} s after: {self.reason}", WATCHDOG_EXIT_CODE)


STOP = Stop()


def on_stop_signals(callback: Callable[[], None] | None = None, *, interrupt: bool = False,
                    stop: Stop = STOP) -> Callable[[], None]:
    """SIGTERM and SIGINT request ``stop`` (``callback`` runs then; it must not block). With
    ``interrupt`` the main thread also gets a KeyboardInterrupt, like Ctrl-C by default: for start-up,
    where there is nothing to wait for but the ``finally`` clauses. A second signal ends the process
    at once. A child forked later that inherits the handlers gets the default behaviour back.
    Returns what puts the previous handlers back."""
    if callback is not None:
        stop.on_request(callback)
    owner = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != owner:  # a forked child (hivemind's DHT process): die as if we were not here
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if stop.requested:
            # a thread, not here: the main thread may hold a lock that abandon() needs (logging's)
            threading.Thread(target=abandon, args=(f"{name} again while stopping", 130),
                             name="corolla-stop-again", daemon=True).start()
            return
        stop.request(f"{name} received")
        if interrupt:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def start_exit_fuse(code: int = 0, stop: Stop = STOP) -> None:
    """Call when the orderly stop is done and the process is about to exit. Python's exit waits for
    every non-daemon thread (an HTTP worker blocked on a model, a pool thread on a dead peer): if
    that takes longer than :data:`LEFTOVER_JOIN_S` (or the deadline), the process exits with ``code``
    without them, logging the ones abandoned."""
    _flush()
    fuse = min(LEFTOVER_JOIN_S, stop.remaining(margin_s=0.5)) if stop.requested else LEFTOVER_JOIN_S

    def burn() -> None:
        time.sleep(fuse)
        abandon(f"threads still running {fuse:.1f} s after the stop was done", code)

    threading.Thread(target=burn, name="corolla-stop-fuse", daemon=True).start()


def abandon(why: str, code: int) -> None:
    """Log the threads still running and the child processes, kill those children, exit at once."""
    try:
        lines = [f"{why}; abandoning:"]
        frames = sys._current_frames()
        for thread in _running_threads():
            daemon = " (daemon)" if thread.daemon else ""
            lines.append(f"  thread {thread.name}{daemon}: {_where(frames.get(thread.ident))}")
        killed = kill_descendants()
        lines += [f"  killed child process {pid}: {cmd}" for pid, cmd in killed]
        log.warning("\n".join(lines))
    finally:
        _flush()
        os._exit(code)


def kill_descendants(pid: int | None = None, sig: int = signal.SIGKILL) -> list[tuple[int, str]]:
    """Signal every descendant of ``pid`` (this process by default), except the ones kept on exit and
    theirs; returns ``(pid, command line)`` of each signalled."""
    out = []
    for child in descendants(pid or os.getpid(), skip=_kept):
        cmd = _cmdline(child)
        try:
            os.kill(child, sig)
        except (ProcessLookupError, PermissionError):
            continue
        out.append((child, cmd))
    return out


def descendants(pid: int, skip: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; psutil where there is none), without the
    subtrees rooted at ``skip``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            import psutil
        except ImportError:
            return []
        try:
            found = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p.pid for p in found if p.pid not in skip]
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in skip:
                out.append(child)
                todo.append(child)
    return out


def _running_threads() -> list[threading.Thread]:
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and t is not threading.main_thread() and t.is_alive()
            and not t.name.startswith("corolla-stop-")]


def _where(frame) -> str:
    """Where a thread is: its innermost frames in corolla (or the innermost frame at all)."""
    if frame is None:
        return "?"
    stack = traceback.extract_stack(frame)
    ours = [f for f in stack if f"{os.sep}corolla{os.sep}" in f.filename] or stack[-1:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(ours[-3:]))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
