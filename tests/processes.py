"""Finding and stopping what a test's command started: a tag in the environment, inherited by every
process the command starts (detached or not), and /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path


def tagged_env(**extra: str) -> tuple[dict, str]:
    """This process's environment plus a fresh ``COROLLA_TEST_TAG`` (and ``extra``); returns (env, tag)."""
    tag = uuid.uuid4().hex
    return {**os.environ, "COROLLA_TEST_TAG": tag, "PYTHONUNBUFFERED": "1", **extra}, tag


def processes_with(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag``: everything a command started, detached or not."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"COROLLA_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes():
                if "State:\tZ" not in (entry / "status").read_text():
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_tagged(tag: str) -> None:
    """SIGKILL every live process carrying ``tag`` (cleanup, also after a failed test)."""
    for pid in processes_with(tag):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
