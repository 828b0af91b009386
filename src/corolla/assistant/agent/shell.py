"""Running one shell command for the agent: in the workspace, bounded in time and in output.

The command runs as ``bash -c`` in its own process group (``start_new_session``), so a timeout
kills it and everything it spawned; stdout and stderr are merged and only a head and a tail are
kept while reading, so a command printing gigabytes costs little memory. Where the kernel lets an
unprivileged user make namespaces (``unshare -rn``), the command runs in a fresh network namespace
whose only interface is its own loopback (brought up with ``ip``): nothing off the machine can be
reached, whatever the command does.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 65536
DRAIN_AFTER_EXIT_S = 1.0  # output still in the pipe once the shell is gone (or killed)
SANDBOX_PROBE_TIMEOUT_S = 10.0
ENV_OVERRIDES = {"CI": "1", "PAGER": "cat", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0"}


@dataclass(frozen=True)
class CommandResult:
    """What became of a command: run (``exit_code``, negative for a signal) or ``refused`` (with ``reason``)."""

    exit_code: int | None
    output: str  # merged stdout/stderr, already truncated (the marker says so)
    timed_out: bool = False
    duration_s: float = 0.0
    refused: bool = False
    reason: str = ""
    sandboxed: bool = False  # ran inside its own network namespace


def truncate_middle(text: str, max_chars: int, *, total: int | None = None) -> str:
    """``text`` cut to about ``max_chars`` keeping its head and tail (errors are often at the end)."""
    if len(text) <= max_chars and total is None:
        return text
    total = len(text) if total is None else total
    keep = max(max_chars, 200)
    head, tail = keep * 2 // 5, keep - keep * 2 // 5
    if len(text) <= keep:
        head, tail = len(text), 0
    cut = total - head - tail
    marker = f"\n[... {cut} characters cut from the middle ({total} in all) ...]\n"
    return text[:head] + marker + (text[-tail:] if tail else "")


class _Capture:
    """The first and last ``limit`` bytes of a stream, and how many bytes it had."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.limit:
                del self.tail[:-self.limit]

    def text(self, max_chars: int) -> str:
        if self.total == len(self.head) + len(self.tail):
            return truncate_middle((self.head + self.tail).decode("utf-8", "replace"), max_chars)
        head = self.head.decode("utf-8", "replace")
        tail = self.tail[-self.limit:].decode("utf-8", "replace")
        keep = max(max_chars, 200)
        head_chars, tail_chars = keep * 2 // 5, keep - keep * 2 // 5
        marker = f"\n[... output cut: {self.total} bytes in all; showing the first and last lines ...]\n"
        return head[:head_chars] + marker + tail[-tail_chars:]


# --- the network sandbox -----------------------------------------------------------------------
_sandbox_lock = threading.Lock()
_sandbox_prefix: list[str] | None = None
_sandbox_probed = False


def _sandbox_candidates() -> list[list[str]]:
    """Wrappers to try: ``<wrapper> COMMAND`` runs COMMAND with bash in a new network namespace."""
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    lo_up = f"{ip} link set lo up 2>/dev/null; " if ip else ""
    uid, gid = os.getuid(), os.getgid()
    candidates = []
    if uid != 0:  # map back to our own uid, so files and tools see the user they expect, not root
        inner = f'exec unshare --map-user={uid} --map-group={gid} bash -c "$1"'
        candidates.append(["unshare", "-rn", "sh", "-c", lo_up + inner, "sh"])
    candidates.append(["unshare", "-rn", "sh", "-c", lo_up + 'exec bash -c "$1"', "sh"])
    return candidates


def sandbox_prefix() -> list[str] | None:
    """The argv prefix that runs a command without the network, or None where namespaces are not allowed.

    Probed once per process (a user namespace is either allowed here or not).
    """
    global _sandbox_prefix, _sandbox_probed
    with _sandbox_lock:
        if not _sandbox_probed:
            _sandbox_probed = True
            if shutil.which("unshare"):
                for prefix in _sandbox_candidates():
                    try:
                        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=SANDBOX_PROBE_TIMEOUT_S,
                                            check=False).returncode == 0
                    except (OSError, subprocess.TimeoutExpired):
                        ok = False
                    if ok:
                        _sandbox_prefix = prefix
                        break
        return None if _sandbox_prefix is None else list(_sandbox_prefix)


# --- running -----------------------------------------------------------------------------------
def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_shell(command: str, cwd: Path, *, timeout_s: float, max_output_chars: int, sandbox: bool = True,
              env: dict[str, str] | None = None) -> CommandResult:
    """Run ``command`` with ``bash -c`` in ``cwd``; kill its whole process group after ``timeout_s``.

    Whatever the command left running in its group when the shell exits is killed too, so no
    stray process outlives the call (and none keeps the output pipe open).
    """
    prefix = sandbox_prefix() if sandbox else None
    argv = [*prefix, command] if prefix else ["bash", "-c", command]
    full_env = {**os.environ, **(env or {}), **ENV_OVERRIDES}
    capture = _Capture(max(max_output_chars, 200) * 4)  # utf-8: up to 4 bytes a character
    start = time.monotonic()
    deadline = start + timeout_s
    timed_out = False
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=full_env)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    eof = False
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if eof:  # the output is closed but the command still runs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=deadline - now)
                continue
            eof = _read_ready(sel, fd, capture, min(deadline - now, 0.1))
        _kill_group(proc)  # the timed-out command, or what the finished shell left running
        drain_until = time.monotonic() + DRAIN_AFTER_EXIT_S
        while not eof and time.monotonic() < drain_until:
            eof = _read_ready(sel, fd, capture, drain_until - time.monotonic())
    finally:
        sel.close()
        _kill_group(proc)
        proc.stdout.close()
        exit_code = proc.wait()
    duration = time.monotonic() - start
    output = capture.text(max_output_chars)
    if timed_out:
        output += f"\n[killed after {timeout_s:g} s: the command did not finish in time]"
    return CommandResult(exit_code=exit_code, output=output, timed_out=timed_out, duration_s=round(duration, 3),
                         sandboxed=prefix is not None)


def _read_ready(sel: selectors.BaseSelector, fd: int, capture: _Capture, timeout_s: float) -> bool:
    """Read what is ready within ``timeout_s``; True at end of file."""
    for _ in sel.select(timeout=max(0.0, timeout_s)):
        for _ in range(16):  # bounded, so a flood of output cannot starve the deadline check
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return False
            if not data:
                return True
            capture.add(data)
    return False
