"""How an agent works, in one place: the modes, their meaning and the default every surface uses.

- ``tools``: the model drives with tool calls (read, search, edit, run the tests, ...).
- ``blocks``: for small models: the files the task names are in the first message, the model answers
  with code blocks and the tests run after each change (tool calls in the text still work). With one
  (non-test) file named and tests present, the first step is the edit command's single edit.
- ``auto``: blocks when the task names a file of the workspace, else tools.

The workflows (``tests --until-green``, ``refactor``) run their agent in :data:`WORKFLOW_MODE` unless told
otherwise: the mode that solved more of ``benchmarks/edits.py``'s tasks with the default small model
(``--agent-mode``; the figures are in the README).
"""

from __future__ import annotations

from typing import Literal, get_args

from corolla.assistant.errors import AssistantError

Mode = Literal["auto", "tools", "blocks"]
MODES: tuple[str, ...] = get_args(Mode)
DEFAULT_MODE: Mode = "auto"  # blocks when the task names a file: small models do far better
WORKFLOW_MODE: Mode = "auto"  # tests --until-green and refactor (their tasks name the file: blocks); see README
MODES_HELP = ("tools: the model drives with tool calls; blocks: the files the task names are shown, the model "
              "answers with code blocks and the tests run after each change (what small models do well); "
              "auto (default): blocks when the task names a file")


def uses_blocks(mode: str, names_a_file: bool) -> bool:
    """Whether a run in ``mode`` works in blocks (``names_a_file``: its task names a file of the workspace)."""
    mode = check_mode(mode)
    return mode == "blocks" or (mode == "auto" and names_a_file)


def check_mode(mode: str) -> Mode:
    """``mode`` if it is one of :data:`MODES`, else an error that lists them."""
    if mode not in MODES:
        raise AssistantError(f"unknown agent mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]
