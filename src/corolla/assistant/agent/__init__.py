"""Agent mode: a model works on a task with tools (read, search, edit, run commands and tests) in a workspace.

:mod:`.tools` defines the tools and runs a model's calls safely; :mod:`.policy` decides which shell
commands run, are asked for, or are refused, and runs them in the workspace with a timeout,
truncated output and, where possible, no network. :mod:`.loop` is the tool loop (:class:`Agent`) in
the modes of :mod:`.modes`, :mod:`.report` what a run hands back, :mod:`.workflows` the
test-until-green and refactor-with-a-safety-net runs built on it (with :mod:`.guard` over the
existing tests), and :mod:`.background` runs agents in their own git worktrees, in the background if
asked.
"""

from __future__ import annotations

from corolla.assistant.lazy import lazy_getattr

# public name -> the module that defines it; imported on first use, so that importing a light module of
# this package (the CLI reads :mod:`.modes` to build its flags) does not load the loop and its tools
_WHERE = {
    "Agent": "loop", "AgentConfig": "loop", "AgentReport": "report",
    "CommandPolicy": "policy", "CommandResult": "policy", "DEFAULT_ALLOW": "policy", "Decision": "policy",
    "TOOLS": "tools", "Tool": "tools", "ToolContext": "tools", "ToolResult": "tools",
    "detect_test_command": "tools", "openai_tools": "tools", "run_tool": "tools",
    "WorkflowReport": "report", "refactor": "workflows", "tests_until_green": "workflows",
}


__getattr__ = lazy_getattr(__name__, _WHERE)


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
