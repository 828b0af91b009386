"""Agent mode: a model works on a task with tools (read, search, edit, run commands and tests) in a workspace.

:mod:`.tools` defines the tools and runs a model's calls safely; :mod:`.policy` decides which shell
commands run, are asked for, or are refused, and runs them in the workspace with a timeout,
truncated output and, where possible, no network. :mod:`.loop` is the tool loop (:class:`Agent`),
:mod:`.workflows` the test-until-green and refactor-with-a-safety-net runs built on it, and
:mod:`.background` runs agents in their own git worktrees, in the background if asked.
"""

from __future__ import annotations

from corolla.assistant.agent.loop import Agent, AgentConfig, AgentReport
from corolla.assistant.agent.policy import DEFAULT_ALLOW, CommandPolicy, CommandResult, Decision
from corolla.assistant.agent.tools import (TOOLS, Tool, ToolContext, ToolResult, detect_test_command, openai_tools,
                                          run_tool)
from corolla.assistant.agent.workflows import WorkflowReport, refactor, tests_until_green

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentReport",
    "CommandPolicy",
    "CommandResult",
    "DEFAULT_ALLOW",
    "Decision",
    "TOOLS",
    "Tool",
    "ToolContext",
    "ToolResult",
    "WorkflowReport",
    "detect_test_command",
    "openai_tools",
    "refactor",
    "run_tool",
    "tests_until_green",
]
