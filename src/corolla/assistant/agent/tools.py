"""The agent's tools: what a model may call, their JSON schemas, and running a call safely.

Every call goes through :func:`run_tool`, which checks the arguments against the tool's schema
(unknown tool, missing, extra or mistyped arguments) and turns every model mistake -- a path
outside the workspace or in ``.git/``, text an edit cannot find, a refused command -- into a
:class:`ToolResult` with ``ok=False`` and a message saying what to do instead. Nothing a model
sends makes it raise. Output is capped (lines, hits, characters) and says how to get more.

Edits go through :mod:`corolla.assistant.edits` (``propose`` then ``apply``), so they get its
checks (exact or fuzzy match, placeholders, syntax) and its atomic writes; each applied proposal
is kept in :attr:`ToolContext.applied`, so a run's edits can be undone in reverse order.
Commands go through the context's :class:`CommandPolicy`.

Tools from elsewhere (an MCP server's, :mod:`corolla.assistant.mcp.tools`) join a run through
:attr:`ToolContext.extra`: the same checks, the same policy, the same output cap.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corolla.assistant.agent import search as search_mod
from corolla.assistant.agent.guard import TestGuard
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.schema import check_args, check_args_jsonschema
from corolla.assistant.agent.shell import CommandResult, truncate_middle
from corolla.assistant.agent.testing import detect_test_command, failing_tests, summarise_tests
from corolla.assistant.context import list_files
from corolla.assistant.edits import Allowance, Edit, Proposal, apply, propose, revert
from corolla.assistant.edits.structure import DanglingNameError
from corolla.assistant.errors import (
    AmbiguousMatchError,
    AssistantError,
    EditError,
    NoMatchError,
    PlaceholderError,
    StaleFileError,
    StructureBreakError,
    SyntaxBreakError,
)
from corolla.assistant.workspace import normalize, show_text

__all__ = ["TOOLS", "Tool", "ToolContext", "ToolResult", "apply_edits", "detect_test_command", "openai_tools",
           "run_tool"]

MAX_READ_LINES = 400
MAX_READ_CHARS = 16_000
MAX_LINE_CHARS = 2_000
MAX_LIST_ENTRIES = 300
MAX_DIFF_CHARS = 6_000
MAX_DEPTH = 6


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave: ``output`` is what the model sees; ``data`` the facts for reports and tests;
    ``unchanged``: an edit that was refused only because it would change nothing (the code is already there)."""

    ok: bool
    output: str
    data: dict = field(default_factory=dict)
    unchanged: bool = False


@dataclass
class ToolContext:
    """What the tools of one agent run share: the workspace, the command policy, and what was done."""

    root: Path
    policy: CommandPolicy
    applied: list[Proposal] = field(default_factory=list)  # in order; undo = revert in reverse
    commands: list[dict] = field(default_factory=list)  # {"command", "exit_code", "timed_out", "duration_s"}
    allow: Allowance = field(default_factory=Allowance)  # structural changes the task asked for (set per run)
    extra: dict[str, Tool] = field(default_factory=dict)  # tools beyond TOOLS for this run (MCP servers')
    guard: TestGuard | None = None  # refuses writes that delete or weaken existing tests (see .guard)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def revert_all(self) -> list[str]:
        """Undo every applied edit, newest first; the paths restored. Raises StaleFileError if one was changed since."""
        paths: list[str] = []
        while self.applied:
            proposal = self.applied[-1]
            revert(self.root, proposal)
            self.applied.pop()
            paths.extend(p for p in proposal.paths if p not in paths)
        return paths


@dataclass(frozen=True)
class Tool:
    """A callable tool: its name, what it is for (the model reads this), its JSON schema, and its code.
    ``jsonschema``: the schema may use any JSON Schema keyword (a tool of an MCP server), so the arguments
    are checked with :func:`check_args_jsonschema` instead of the built-in tools' strict checker."""

    name: str
    description: str
    parameters: dict
    run: Callable[[ToolContext, dict], ToolResult]
    jsonschema: bool = False

    def usage(self) -> str:
        props = self.parameters.get("properties") if isinstance(self.parameters.get("properties"), dict) else {}
        required = set(self.parameters.get("required") or ())
        args = ", ".join(f"{k}: {v.get('type', 'any') if isinstance(v, dict) else 'any'}"
                         + ("" if k in required else " (optional)") for k, v in props.items())
        return f"{self.name}({args})"


def _fail(message: str, **data) -> ToolResult:
    return ToolResult(False, message, data)


def run_tool(ctx: ToolContext, name: str, args) -> ToolResult:
    """Run tool ``name`` (one of TOOLS or of ``ctx.extra``) with ``args`` (a dict or its JSON text); model
    mistakes give ``ok=False``, never raise."""
    tool = (TOOLS.get(name) or ctx.extra.get(name)) if isinstance(name, str) else None
    if tool is None:
        known = [*TOOLS, *ctx.extra]
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return _fail(f"unknown tool {name!r}.{hint} The tools are: {', '.join(known)}.")
    checked, problem = (check_args_jsonschema if tool.jsonschema else check_args)(tool, args)
    if checked is None:
        return _fail(problem)
    try:
        return tool.run(ctx, checked)
    except AssistantError as e:
        return _fail(f"{name}: {e}")
    except (OSError, UnicodeError) as e:
        return _fail(f"{name} failed: {e}")


def openai_tools(names=None, extra: dict[str, Tool] | None = None) -> list[dict]:
    """The tools (all, or ``names`` in that order; ``extra`` beside TOOLS) as OpenAI-style function definitions."""
    known = {**TOOLS, **(extra or {})}
    chosen = list(known) if names is None else list(names)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}}
            for t in (known[n] for n in chosen)]


# --- paths -------------------------------------------------------------------------------------
def _workspace_path(ctx: ToolContext, path: str, *, allow_root: bool = False) -> tuple[str | None, str]:
    """``path`` relative to the workspace ("" for the root when ``allow_root``), or (None, why)."""
    if allow_root and path.strip() in ("", "/"):
        return "", ""
    rel, why = normalize(ctx.root, path, allow_root=allow_root)
    if rel is None:
        return None, f"{why}; use a path relative to the workspace root, outside .git/"
    return rel, ""


# --- the tools ---------------------------------------------------------------------------------
def _read_file(ctx: ToolContext, args: dict) -> ToolResult:
    rel, why = _workspace_path(ctx, args["path"])
    if rel is None:
        return _fail(f"read_file: {why}")
    full = ctx.root / rel
    if full.is_dir():
        return _fail(f"read_file: {rel} is a directory; use list_dir(path={rel!r})")
    if not full.exists():
        return _fail(f"read_file: {rel} does not exist; use list_dir or search to find the right path")
    text, why = show_text(ctx.root, rel)
    if text is None:
        return _fail(f"read_file: {why}")
    lines = text.splitlines()
    total = len(lines)
    if total == 0:
        return ToolResult(True, f"{rel} is empty (0 lines)", {"path": rel, "total_lines": 0})
    start = args.get("start_line") or 1
    end = min(args.get("end_line") or total, total)
    if start > total:
        return _fail(f"read_file: {rel} has {total} lines; start_line {start} is past the end")
    if end < start:
        return _fail(f"read_file: end_line ({end}) must not be before start_line ({start})")
    width = len(str(end))
    out: list[str] = []
    size = 0
    shown_end = start - 1
    for n in range(start, end + 1):
        line = lines[n - 1]
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" [... line cut: {len(lines[n - 1])} characters]"
        entry = f"{n:>{width}}\t{line}"
        if out and (len(out) >= MAX_READ_LINES or size + len(entry) + 1 > MAX_READ_CHARS):
            break
        out.append(entry)
        size += len(entry) + 1
        shown_end = n
    header = f"{rel} (lines {start}-{shown_end} of {total}; the numbers before the tabs are not part of the file)"
    body = "\n".join(out)
    if shown_end < end:
        body += (f"\n[... {end - shown_end} more lines; to read on, call read_file with path={rel!r}, "
                 f"start_line={shown_end + 1}]")
    return ToolResult(True, f"{header}\n{body}", {"path": rel, "start_line": start, "end_line": shown_end,
                                                  "total_lines": total, "truncated": shown_end < end})


def _list_dir(ctx: ToolContext, args: dict) -> ToolResult:
    rel, why = _workspace_path(ctx, args["path"], allow_root=True)
    if rel is None:
        return _fail(f"list_dir: {why}")
    folder = ctx.root / rel if rel else ctx.root
    if folder.is_file():
        return _fail(f"list_dir: {rel} is a file; use read_file(path={rel!r})")
    if not folder.is_dir():
        return _fail(f"list_dir: {rel} does not exist; call list_dir() to see the workspace's top level")
    prefix = f"{rel}/" if rel else ""
    files = [f[len(prefix):] for f in list_files(ctx.root) if f.startswith(prefix)]
    shown = rel or "."
    if not files:
        return ToolResult(True, f"{shown}: no files (empty, or all ignored by .gitignore)", {"path": shown, "files": 0})
    tree: dict = {}
    for f in files:
        node = tree
        for part in f.split("/")[:-1]:
            node = node.setdefault(part + "/", {})
        node[f.rsplit("/", 1)[-1]] = None
    lines: list[str] = []
    _render(tree, args["depth"], 0, lines)
    more = len(lines) - MAX_LIST_ENTRIES
    body = "\n".join(lines[:MAX_LIST_ENTRIES])
    if more > 0:
        body += f"\n[... {more} more entries; list a subfolder with list_dir(path=...) or use a smaller depth]"
    return ToolResult(True, f"{shown}/ ({len(files)} files)\n{body}",
                      {"path": shown, "files": len(files), "truncated": more > 0})


def _count(node: dict) -> int:
    return sum(1 if child is None else _count(child) for child in node.values())


def _render(node: dict, depth: int, level: int, out: list[str]) -> None:
    for name in sorted(node, key=lambda n: (node[n] is None, n)):  # folders first
        child = node[name]
        if child is None:
            out.append("  " * level + name)
        elif level + 1 >= depth:
            out.append("  " * level + f"{name} ({_count(child)} files)")
        else:
            out.append("  " * level + name)
            _render(child, depth, level + 1, out)
        if len(out) > MAX_LIST_ENTRIES * 2:
            return


def _search(ctx: ToolContext, args: dict) -> ToolResult:
    query, kind, glob = args["query"], args["kind"], args.get("glob")
    if not query.strip():
        return _fail("search: query is empty; give a word, identifier or regular expression to look for")
    find = search_mod.search_symbols if kind == "symbol" else search_mod.search_text
    result = find(ctx.root, query, glob)
    data = {"total": result.total, "files": sorted(result.files), "kind": kind}
    if not result.total:
        hint = " (try kind='text')" if kind == "symbol" else " (try a shorter query, or kind='symbol' for a name)"
        notes = "".join(f"; {n}" for n in result.notes)
        return ToolResult(True, f"no matches for {query!r}{notes}{hint}", data)
    body = "\n".join(result.hits)
    tail = [*result.notes]
    if result.total > len(result.hits):
        tail.append(f"showing {len(result.hits)} of {result.total} matches in {len(result.files)} files; narrow it "
                    "with glob (e.g. 'src/**/*.py') or a more precise query")
    if tail:
        body += "\n[" + "; ".join(tail) + "]"
    return ToolResult(True, body, data)


_EDIT_HINTS = [
    (NoMatchError, "Read the file again (read_file) and copy the exact current lines into search."),
    (AmbiguousMatchError, "Put more surrounding lines into search so that it matches one place only."),
    (PlaceholderError, "Write out the complete new code in replace; no placeholders."),
    (SyntaxBreakError, "Fix replace so that the file still parses."),
    (DanglingNameError, "Send the whole file, with every use of the old name changed."),
    (StructureBreakError, "Keep every definition at its place and indentation, with its name."),
    (StaleFileError, "Read the file again and redo the edit against its current text."),
]


def apply_edits(ctx: ToolContext, tool: str, edits: list[Edit]) -> ToolResult:
    """Propose and apply ``edits`` at once (all or none), recorded in ``ctx.applied``; a refusal is a failed
    result saying what to do instead. Also how the agent applies the code blocks a model writes."""
    return _apply_edit(ctx, tool, *edits)


def _apply_edit(ctx: ToolContext, tool: str, *edits: Edit) -> ToolResult:
    try:
        proposal = propose(ctx.root, list(edits), allow=ctx.allow)
        if not proposal.changes:
            return ToolResult(False, f"{tool}: the edit would change nothing (the new text equals the old)",
                              unchanged=True)
        refusal = ctx.guard.refuse(proposal.changes, ctx.allow) if ctx.guard is not None else None
        if refusal:
            return _fail(f"{tool} refused: {refusal}", error="TestGuard", tests_guard=True)
        apply(ctx.root, proposal)
    except EditError as e:
        refusal = (ctx.guard.refuse_edits(ctx.root, list(edits), ctx.allow)
                   if ctx.guard is not None and isinstance(e, StructureBreakError) else None)
        if refusal:  # a test function removed: the test guard's reason is the one to hear
            return _fail(f"{tool} refused: {refusal}", error="TestGuard", tests_guard=True)
        hint = next((h for cls, h in _EDIT_HINTS if isinstance(e, cls)), "")
        return _fail(f"{tool} refused: {e} {hint}".rstrip(), error=type(e).__name__)
    ctx.applied.append(proposal)
    notes = [n for n in proposal.notes if "no change" not in n]
    head = f"{tool}: changed {', '.join(proposal.paths)}" + (f" ({'; '.join(notes)})" if notes else "")
    return ToolResult(True, f"{head}\n{truncate_middle(proposal.diff, MAX_DIFF_CHARS)}",
                      {"files": list(proposal.paths), "diff": proposal.diff})


def _existing_text(ctx: ToolContext, path: str) -> tuple[str | None, str | None]:
    """(workspace path, its text or None when missing/empty); raises UnsafePathError via normalize's refusal."""
    rel, _ = normalize(ctx.root, path)
    if rel is None:
        return None, None
    text, _ = show_text(ctx.root, rel)
    return rel, text if (text and text.strip()) else None


def _edit(ctx: ToolContext, args: dict) -> ToolResult:
    path, old, new = args["path"], args["search"], args["replace"]
    if not old:
        rel, text = _existing_text(ctx, path)
        if text is not None:
            return _fail(f"edit: {rel} already exists and search is empty; set search to the exact lines to "
                         "replace (read_file it first), or choose a new path to create a file")
    return _apply_edit(ctx, "edit", Edit(path, old=old, new=new))


def _write_file(ctx: ToolContext, args: dict) -> ToolResult:
    rel, text = _existing_text(ctx, args["path"])
    if text is not None:
        return _fail(f"write_file: {rel} already exists; use edit(path, search, replace) to change it")
    return _apply_edit(ctx, "write_file", Edit(args["path"], old="", new=args["content"]))


def _record(ctx: ToolContext, command: str, res: CommandResult) -> dict:
    entry = {"command": command, "exit_code": res.exit_code, "timed_out": res.timed_out,
             "duration_s": res.duration_s}
    ctx.commands.append(entry)
    return entry


def _run_command(ctx: ToolContext, args: dict) -> ToolResult:
    command = args["command"]
    res = ctx.policy.run(command, ctx.root)
    if res.refused:
        return _fail(f"run_command refused: {res.reason}", command=command, refused=True)
    entry = _record(ctx, command, res)
    status = "timed out" if res.timed_out else f"exit code {res.exit_code}"
    return ToolResult(res.exit_code == 0 and not res.timed_out, f"$ {command}\n{res.output.rstrip()}\n[{status}]",
                      dict(entry))


def _run_tests(ctx: ToolContext, args: dict) -> ToolResult:
    argv = detect_test_command(ctx.root)
    if argv is None:
        return _fail("run_tests: no test setup found (looked for pytest configuration, a tests/ folder or test_*.py, "
                     "package.json scripts.test, go.mod, Cargo.toml); use run_command with the project's test command")
    try:
        extra = shlex.split(args.get("args") or "")
    except ValueError as e:
        return _fail(f"run_tests: args cannot be parsed ({e}); check the quoting")
    if extra and argv[:2] == ["npm", "test"]:
        extra = ["--", *extra]
    command = shlex.join(argv + extra)
    res = ctx.policy.run(command, ctx.root)
    if res.refused:
        return _fail(f"run_tests refused: {res.reason}", command=command, refused=True)
    _record(ctx, command, res)
    passed = res.exit_code == 0 and not res.timed_out
    summary = "timed out" if res.timed_out else summarise_tests(res.output)
    if "pytest" in argv and res.exit_code == 5:
        summary = "no tests were collected (exit code 5)"
    verdict = "passed" if passed else "FAILED"
    text = f"tests {verdict} (exit code {res.exit_code}): {summary}\n$ {command}\n{res.output.rstrip()}"
    failing = None if res.timed_out else failing_tests(res.output, res.exit_code)
    return ToolResult(passed, text, {"command": command, "exit_code": res.exit_code, "passed": passed,
                                     "summary": summary, "timed_out": res.timed_out,
                                     "failing": sorted(failing) if failing is not None else None})


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("read_file", "Read a text file of the workspace, with line numbers (up to "
         f"{MAX_READ_LINES} lines at a time; use start_line/end_line to read other parts). The numbers are not "
         "part of the file: never copy them into edit's search.",
         _obj({"path": {"type": "string", "description": "path relative to the workspace root"},
               "start_line": {"type": "integer", "minimum": 1, "description": "first line to show (1-based)"},
               "end_line": {"type": "integer", "minimum": 1, "description": "last line to show"}}, ["path"]),
         _read_file),
    Tool("list_dir", "List the files under a folder of the workspace as a tree (files ignored by .gitignore "
         "are left out); deeper folders are summarised with their file count.",
         _obj({"path": {"type": "string", "default": ".", "description": "folder relative to the workspace root"},
               "depth": {"type": "integer", "default": 2, "minimum": 1, "maximum": MAX_DEPTH,
                         "description": "how many folder levels to expand"}}, []),
         _list_dir),
    Tool("search", "Search the workspace. kind='text' finds lines containing the query (literal text or a "
         "regular expression) and shows path:line: text; kind='symbol' finds definitions (functions, classes, "
         f"methods) whose name contains the query. At most {search_mod.MAX_HITS} hits.",
         _obj({"query": {"type": "string"},
               "kind": {"type": "string", "enum": ["text", "symbol"], "default": "text"},
               "glob": {"type": "string", "description": "only files matching this pattern, e.g. '*.py' or 'src/**'"}},
              ["query"]),
         _search),
    Tool("edit", "Change a file: replace the exact text `search` (copied from the file, several whole lines, "
         "enough to match one place) with `replace`. With an empty search, creates a new file with `replace` "
         "as its content.",
         _obj({"path": {"type": "string"}, "search": {"type": "string"}, "replace": {"type": "string"}},
              ["path", "search", "replace"]),
         _edit),
    Tool("write_file", "Create a new file with this content (refused if the file already has content: use edit).",
         _obj({"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"]),
         _write_file),
    Tool("run_command", "Run a shell command in the workspace (bash). Read-only and test commands run at once; "
         "others need the user's approval; network access other than 127.0.0.1/localhost is refused. Output is "
         "cut to its start and end when long.",
         _obj({"command": {"type": "string"}}, ["command"]),
         _run_command),
    Tool("run_tests", "Run the project's tests (pytest, npm test, go test or cargo test, detected from the "
         "project) and report whether they passed with the summary line and the output.",
         _obj({"args": {"type": "string", "description": "extra arguments, e.g. 'tests/test_x.py -k name'"}}, []),
         _run_tests),
)}
