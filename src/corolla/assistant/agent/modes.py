"""How an agent works, in one place: the modes, their meaning and the default every surface uses.

- ``tools``: the model drives with tool calls (read, search, edit, run the tests, ...).
- ``blocks``: for small models: the files the task names are in the first message, the model answers
  with code blocks and the tests run after each change (tool calls in the text still work).
- ``auto``: blocks when the task names a file of the workspace, else tools.
"""

from __future__ import annotations

from typing import Literal, get_args

from corolla.assistant.errors import AssistantError

Mode = Literal["auto", "tools", "blocks"]
MODES: tuple[str, ...] = get_args(Mode)
DEFAULT_MODE: Mode = "auto"  # blocks when the task names a file: small models do far better
MODES_HELP = ("tools: the model drives with tool calls; blocks: the files the task names are shown, the model "
              "answers with code blocks and the tests run after each change (what small models do well); "
              "auto (default): blocks when the task names a file")


def check_mode(mode: str) -> Mode:
    """``mode`` if it is one of :data:`MODES`, else an error that lists them."""
    if mode not in MODES:
        raise AssistantError(f"unknown agent mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]
