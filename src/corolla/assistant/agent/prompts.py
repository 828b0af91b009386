"""The agent's prompts, written for small models (Qwen2.5-Coder-0.5B): short, concrete, one way to do
each thing, an example of the exact call format, and the files of the project right there so the
first step is not spent listing them."""

from __future__ import annotations

import json

from corolla.assistant.fences import code_block
from corolla.assistant.languages import fence_language

MAX_FILES_LISTED = 60

SYSTEM = """\
You are corolla, a coding agent. You work in the project at {root} by calling tools.
How to work:
1. Read the files you need (read_file, search).
2. To change a file, reply with its path on one line and then the new code in one fenced block: the whole
file, or the whole functions you change (each from its first line to its last). Like this:
{example}
```{lang}
<the new code>
```
Use write_file only for new files.
3. Run the tests with run_tests and fix what fails.
4. When the task is done, reply with a short summary of what you changed, with no code and no tool call.
Do not delete or weaken existing tests."""

PROMPT_TOOLS = """\
To call a tool, reply with one call in exactly this format and nothing else:
<tool_call>
{{"name": "read_file", "arguments": {{"path": "{example}"}}}}
</tool_call>
You will get the result, then make the next call. Tools:
{tools}"""

RETRY = """\
Your tool call could not be read: {reason}
Reply with one tool call in exactly this format, with one of the tools and its arguments, for example:
<tool_call>
{{"name": "read_file", "arguments": {{"path": "{example}"}}}}
</tool_call>
or, if the task is done, a short summary with no tool call."""


BLOCKS_SYSTEM = """\
You are corolla, a coding assistant changing the project at {root}.
To change a file, reply with its path on one line and then the new code in one fenced block: the whole file,
or the whole functions you change (each from its first line to its last). Like this:
{example}
```{lang}
<the new code>
```
To replace some lines only, write the path with their first and last line numbers (path:FIRST-LAST) on the line
before the block. Send only the code you change, never a file as it is.
Write complete code: no placeholders, no "..." for code you keep.{tests}
When nothing is left to change, reply with a short summary and no code."""

BLOCKS_TESTS = "\nThe tests run after each change and you will see their result."
BLOCKS_AGAIN = "Send the code again, fixed: the file's path on one line, then the code in one fenced block."
BLOCKS_TESTS_FAIL = ("The tests fail. Find the cause in the output above and send the fixed code: the file's path "
                     "on one line, then the code in one fenced block. Do not change the tests.")
BLOCKS_DONE = "If the task is done, reply with a short summary and no code."
BLOCKS_AGAIN_CALL = ("That could not be used ({reason}). Do not call functions: send the new code, the file's path "
                     "on one line and then the code in one fenced block.")


def task_reminder(task: str) -> str:
    """The task's first line, to repeat after a failure (a small model loses it in a long conversation)."""
    first = next((line.strip() for line in task.splitlines() if line.strip()), "")
    if not first:
        return ""
    return "\nThe task: " + (first if len(first) <= 300 else first[:300].rsplit(" ", 1)[0] + " ...")


def blocks_system_prompt(root: str, files: list[str], instructions: str = "", tests: bool = True) -> str:
    """The system prompt of blocks mode (small models): code blocks instead of tool calls."""
    example = example_path(files)
    head = BLOCKS_SYSTEM.format(root=root, example=example, tests=BLOCKS_TESTS if tests else "",
                                lang=fence_language(example))
    return "\n\n".join([head, *_project_parts(files, instructions, more_hint="")])


def _project_parts(files: list[str], instructions: str, more_hint: str) -> list[str]:
    """The project's instructions and its files (the first MAX_FILES_LISTED), as prompt sections."""
    parts = []
    if instructions.strip():
        parts.append("Follow the project's instructions:\n" + instructions.strip())
    if files:
        shown = files[:MAX_FILES_LISTED]
        more = f"\n... and {len(files) - len(shown)} more{more_hint}" if len(files) > len(shown) else ""
        parts.append("Files in the project:\n" + "\n".join(shown) + more)
    return parts


def file_block(path: str, text: str) -> str:
    """A file as the model sees it in blocks mode: its path, then its text in a fenced block."""
    return code_block(path, text.rstrip(), path)


def range_block(path: str, a: int, b: int, text: str) -> str:
    """Lines ``a-b`` of a file (its ``text``) as the lines the task is about, headed as a block that replaces them."""
    lines = "\n".join(text.splitlines()[a - 1:b])
    return f"The lines to change, {path}:{a}-{b}:\n" + code_block(f"{path}:{a}-{b}", lines.rstrip(), path)


def system_prompt(root: str, files: list[str], instructions: str = "", tools: list[dict] | None = None) -> str:
    """The system prompt; ``tools`` (OpenAI tool dicts) are described in it when the endpoint has no native tools."""
    example = example_path(files)
    parts = [SYSTEM.format(root=root, example=example, lang=fence_language(example)),
             *_project_parts(files, instructions, more_hint=" (list_dir to see them)")]
    if tools:
        parts.append(PROMPT_TOOLS.format(tools="\n".join(describe_tool(t) for t in tools),
                                         example=example))
    return "\n\n".join(parts)


def describe_tool(tool: dict) -> str:
    """One line per tool: ``- edit(path, search, replace): description`` (optional arguments with ``?``)."""
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {}
    required = set(params.get("required") or ())
    names = [p if p in required else f"{p}?" for p in (params.get("properties") or {})]
    description = (fn.get("description") or "").strip()
    first = description.splitlines()[0] if description else ""
    return f"- {fn['name']}({', '.join(names)}): {first}"


def example_path(files: list[str]) -> str:
    """A real file of the project for the examples (small models copy an example's path verbatim)."""
    sources = [f for f in files if not f.split("/")[-1].startswith("test")]
    return (sources or files or ["main.py"])[0]


def retry_prompt(reason: str, files: list[str] | None = None) -> str:
    return RETRY.format(reason=reason, example=example_path(files or []))


def result_message(name: str, ok: bool, output: str) -> str:
    """A tool's result as a user message (prompt-format mode)."""
    status = "" if ok else " (failed)"
    return f"Result of {name}{status}:\n{output}"


def call_text(name: str, arguments: dict) -> str:
    """A call in the prompt format, as the assistant's turn is kept in the history."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


# --- workflows ----------------------------------------------------------------------------------------
# (``blocks``: the agent works in blocks mode, where the tests run after each change without being asked)
def fix_tests_task(file: str, test_file: str, output: str, blocks: bool = False) -> str:
    then = "" if blocks else " Then call run_tests."
    return (f"The tests in {test_file} for {file} fail:\n{output}\n\n"
            f"Find the cause. If the code in {file} is wrong, fix the code; if a new test expects the wrong "
            f"thing, fix that test. Do not delete or weaken tests that already existed.{then}")


def refactor_task(request: str, test_command: str | None, blocks: bool = False) -> str:
    if not test_command:
        check = ""
    elif blocks:
        check = f" The tests ({test_command}) run after each change; they must still pass."
    else:
        check = f" Then run the tests ({test_command}) with run_tests; they must still pass."
    return f"Refactor the code: {request}\nKeep the behaviour the same.{check}"


def refactor_fix_task(request: str, output: str, blocks: bool = False) -> str:
    then = "" if blocks else " Then call run_tests."
    return (f"After your refactoring ({request}) the tests that passed before fail now:\n{output}\n\n"
            f"Fix the code so the tests pass again, keeping the refactoring. Do not change the tests.{then}")
