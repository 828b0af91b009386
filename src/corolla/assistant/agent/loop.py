"""The agent's tool loop: ask the model, run the tools it calls, send the results back, until it
answers without a call (done) or a bound is reached. A reply without a call that holds code for a
file of the workspace in a fenced block is that file's edit (:mod:`.writes`: small models write code
far better in a block than inside a tool call's JSON); its result goes back like a tool's.

Bounds, so a confused small model cannot run forever: ``max_steps`` model replies, ``max_wall_s``
seconds on the injected clock, a stop event (set by ``corolla agent stop``), and at most
``malformed_retries`` unreadable tool calls in a row (each is sent back with the reason).

Tool calling is native when the endpoint offers it (``tools=[...]`` in the request; corolla's API
does, with Qwen's template); if the endpoint refuses tools, or ``native_tools`` is False, the tools
are described in the system prompt and the calls parsed from the text (:mod:`.toolcalls`).

The tools of the workspace's MCP servers (``.corolla/mcp.json``, ``.vscode/mcp.json``;
:mod:`corolla.assistant.mcp`) join the built-in ones in tools mode, as ``mcp__<server>__<tool>``: the
servers start when a run starts and, unless the caller passed its own :class:`MCPHub`, stop when it ends.

Every step is an event of the session (``task``, ``mcp``, ``assistant``, ``tool_call``, ``tool_result``,
``edit``, ``malformed``, ``report``), so ``corolla agent logs`` can follow a run from another
process and a run survives a restart as a readable record. The result is an :class:`AgentReport`
saying what changed, what ran, whether the tests pass and what is left.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corolla.assistant.agent import prompts
from corolla.assistant.agent.guard import TestGuard
from corolla.assistant.agent.modes import DEFAULT_MODE, Mode, uses_blocks
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.report import AgentReport
from corolla.assistant.agent.testing import detect_test_command, is_test_file
from corolla.assistant.agent.toolcalls import parse_arguments, parse_text_calls
from corolla.assistant.agent.tools import ToolContext, ToolResult, apply_edits, openai_tools, run_tool
from corolla.assistant.agent.writes import Focus, WriteError, find_writes, map_range, mentioned_files, task_ranges
from corolla.assistant.context import find_instructions, list_files
from corolla.assistant.edits import Allowance, Edit, FileChange, revert, unified_diff
from corolla.assistant.errors import AssistantError, EditError, EndpointError
from corolla.assistant.fences import code_block
from corolla.assistant.llm import LLM
from corolla.assistant.sessions import SessionStore, title_from
from corolla.assistant.workspace import read_text

if TYPE_CHECKING:
    from corolla.assistant.mcp.hub import MCPHub

logger = logging.getLogger(__name__)

MAX_SHOWN_FILE_CHARS = 12_000  # a file the task names is put in the first message (blocks mode) up to this
_CUT_NOTE = "\n[... older output cut to save room; call the tool again if you need it]"


@dataclasses.dataclass
class AgentConfig:
    max_steps: int = 20  # model replies
    max_wall_s: float = 900.0
    malformed_retries: int = 2  # an unreadable tool call is sent back with the reason at most this often in a row
    native_tools: bool | None = None  # None: try native tool calling; fall back to the prompt format
    tools: tuple[str, ...] = ("read_file", "list_dir", "search", "edit", "write_file", "run_command", "run_tests")
    history_chars: int = 24000  # older tool results are cut when the conversation grows past this
    mode: Mode = DEFAULT_MODE  # see :mod:`.modes`
    guard_tests: bool = True  # refuse writes that delete or weaken existing tests (:class:`.guard.TestGuard`)
    mcp: bool = True  # offer the tools of the workspace's MCP servers (tools mode)
    edit_first: bool = True  # blocks mode, one named file with tests: start with the edit command's single edit


class Agent:
    """One coding agent over a workspace; :meth:`run` may be called several times (the tool
    context, with its applied edits and commands, is kept across runs: workflows revert it)."""

    def __init__(self, llm: LLM, root: Path, *, policy: CommandPolicy, store: SessionStore | None = None,
                 session_id: str | None = None, config: AgentConfig | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 ctx: ToolContext | None = None, on_event: Callable[[str, Any], None] | None = None,
                 mcp: MCPHub | None = None):
        self.llm = llm
        self.root = Path(root).resolve()
        self.policy = policy
        self.store = store
        self.session_id = session_id
        self.config = config or AgentConfig()
        self.stop = stop or threading.Event()
        self.clock = clock
        self.ctx = ctx or ToolContext(root=self.root, policy=policy)
        self.on_event = on_event
        self.mcp = mcp  # the caller's MCP servers (it closes them); None: the workspace's, for each run
        self._own_mcp: MCPHub | None = None
        self._native: bool | None = self.config.native_tools
        self._commands: list[dict] = []
        self._read: list[str] = []  # files read in this run, for a code block that names none
        self._blocks = False  # this run is in blocks mode
        self._has_tests = False  # the workspace has a test command (looked up once a run)
        self._focus = Focus()  # the line ranges the task names, kept current as writes move them

    # --- events --------------------------------------------------------------------------------
    def event(self, type: str, data: Any) -> None:
        """Store one step (and tell ``on_event``); the data is made JSON-safe first."""
        data = json.loads(json.dumps(data, default=str, ensure_ascii=False))
        if self.store is not None:
            if self.session_id is None:
                self.session_id = self.store.create(title_from(str(data.get("task", ""))) if isinstance(data, dict)
                                                    else "", kind="agent").id
            self.store.add_event(self.session_id, type, data)
        if self.on_event is not None:
            self.on_event(type, data)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, task: str) -> AgentReport:
        try:
            return self._run(task)
        finally:
            self._close_mcp()

    def _run(self, task: str) -> AgentReport:
        start = self.clock()
        first_edit = len(self.ctx.applied)
        self._commands: list[dict] = []  # what ran (and what was refused) in this run, in order
        self._read = []
        self._blocks = self._blocks_mode(task)
        self.ctx.allow = Allowance.from_request(task)  # renaming or removing a definition only when asked
        if self.config.guard_tests and self.ctx.guard is None:
            self.ctx.guard = TestGuard()  # each test file as it was before this agent first wrote it
        self._focus = _focus(self.root, task)
        self._has_tests = detect_test_command(self.root) is not None
        if self._blocks:
            self._native = False
        self.event("task", {"task": task, "root": str(self.root), "config": dataclasses.asdict(self.config),
                            "mode": "blocks" if self._blocks else "tools"})
        self._open_mcp()
        messages = [{"role": "system", "content": self._system()}, {"role": "user", "content": self._first(task)}]
        steps, malformed = 0, 0
        answers: set[str] = set()  # the replies without a tool call so far: one sent again means a stuck model
        status, summary, error = "error", "", ""
        tests: dict | None = None
        try:
            if self._halt(start) is None and (first := self._edit_first(messages, task)) is not None:
                steps, tests = 1, first["tests"]
                if tests is not None and tests["passed"]:
                    status, summary = "done", first["summary"]
            while status != "done":
                halt = self._halt(start)
                if halt:
                    status, error = halt
                    break
                if steps >= self.config.max_steps:
                    status, error = "step_cap", f"{self.config.max_steps} model replies without a final answer"
                    break
                steps += 1
                _shrink(messages, self.config.history_chars)
                reply = self._complete(messages)
                calls, reason, native = self._calls(reply)
                self.event("assistant", {"step": steps, "text": reply.content, "native": native,
                                         "tool_calls": [{"name": n, "arguments": a} for _, n, a, _ in calls]})
                if not calls and reason is None:
                    if reply.content.strip() in answers:
                        status, error = "repeating", "the model sent one of its earlier replies again"
                        break
                    answers.add(reply.content.strip())
                    wrote = self._write_blocks(messages, reply.content, task)
                    if wrote is None:
                        status, summary = "done", reply.content.strip()
                        break
                    if wrote.get("tests") is not None:
                        tests = wrote["tests"]
                        if tests["passed"]:
                            status, summary = "done", wrote["summary"]
                            break
                    continue
                if reason is not None:
                    malformed += 1
                    self.event("malformed", {"step": steps, "reason": reason, "in_a_row": malformed})
                    if malformed > self.config.malformed_retries:
                        status = "error"
                        error = (f"gave up after {malformed} unreadable tool calls in a row; the last: {reason}")
                        break
                else:
                    malformed = 0
                tests = self._run_calls(messages, reply.content, calls, native, reason, start, tests)
        except AssistantError as e:
            status, error = "error", str(e)
        except Exception as e:  # a bug in a tool must still leave a report behind
            logger.exception("agent run failed")
            status, error = "error", f"{type(e).__name__}: {e}"
        report = self._report(status, summary, error, steps, tests, first_edit)
        self.event("report", report.to_json())
        return report

    # --- MCP servers ----------------------------------------------------------------------------
    def _open_mcp(self) -> None:
        """The MCP servers' tools for this run (their servers start now), into ``ctx.extra``."""
        self.ctx.extra = {}
        if self._blocks or not self.config.mcp:
            return
        hub = self.mcp
        try:
            if hub is None:
                from corolla.assistant.mcp.hub import MCPHub

                hub = MCPHub.from_workspace(self.root)
                if not hub.configured:
                    return
                self._own_mcp = hub
            if not hub.configured:
                return
            from corolla.assistant.mcp.tools import agent_tools

            self.ctx.extra = agent_tools(hub)
            self.event("mcp", {"servers": [{"name": s.name, "state": s.state, "error": s.error,
                                            "tools": [t.qualified for t in s.tools]} for s in hub.statuses()]})
        except (AssistantError, OSError, ValueError) as e:
            logger.warning("the MCP servers are not used in this run: %s", e)
            self.event("mcp", {"error": str(e)})

    def _close_mcp(self) -> None:
        self.ctx.extra = {}
        hub, self._own_mcp = self._own_mcp, None
        if hub is not None:
            hub.close()

    def _tool_names(self) -> list[str]:
        return [*self.config.tools, *(n for n in self.ctx.extra if n not in self.config.tools)]

    def _halt(self, start: float) -> tuple[str, str] | None:
        if self.stop.is_set():
            return "stopped", "stopped on request"
        elapsed = self.clock() - start
        if elapsed >= self.config.max_wall_s:
            return "time_cap", f"{elapsed:.0f} s spent (the cap is {self.config.max_wall_s:.0f} s)"
        return None

    def _system(self) -> str:
        files = list_files(self.root)
        instructions = "\n\n".join(i.body for i in find_instructions(self.root, None))
        if self._blocks:
            return prompts.blocks_system_prompt(str(self.root), files, instructions, self._has_tests)
        described = None if self._native is not False else openai_tools(self._tool_names(), self.ctx.extra)
        return prompts.system_prompt(str(self.root), files, instructions, described)

    def _complete(self, messages: list[dict]):
        if self._native is False:
            return self.llm.complete(messages)
        try:
            reply = self.llm.complete(messages, tools=openai_tools(self._tool_names(), self.ctx.extra))
        except EndpointError as e:
            if self._native is not None:
                raise
            logger.info("the endpoint refused native tools (%s); describing them in the prompt instead", e)
            self._native = False
            messages[0] = {"role": "system", "content": self._system()}
            self.event("mode", {"native_tools": False, "reason": str(e)})
            return self.llm.complete(messages)
        self._native = True
        return reply

    def _calls(self, reply) -> tuple[list[tuple[str | None, str, dict | None, str | None]], str | None, bool]:
        """(calls as (id, name, arguments, error), reason the reply is malformed, native?)."""
        if reply.tool_calls:
            calls, reasons = [], []
            for c in reply.tool_calls:
                args, err = parse_arguments(c.arguments)
                calls.append((c.id, c.name, args, err))
                if err:
                    reasons.append(f"{c.name}: {err}")
            return calls, ("; ".join(reasons) or None), True
        parsed = parse_text_calls(reply.content, set(self._tool_names()))
        return [(None, c.name, c.arguments, None) for c in parsed.calls], parsed.error, False

    def _run_calls(self, messages: list[dict], text: str, calls, native: bool, reason: str | None,
                   start: float, tests: dict | None) -> dict | None:
        if native:
            messages.append({"role": "assistant", "content": text, "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args or {})}}
                for cid, name, args, _ in calls]})
        else:
            messages.append({"role": "assistant", "content": text})
        results: list[str] = []
        for cid, name, args, err in calls:
            if err is not None or self._halt(start):
                result = ToolResult(False, f"not run: {err or 'the run is ending'}")
            else:
                self.event("tool_call", {"name": name, "arguments": args})
                result = self._tool(name, args or {})
                tests = _tests_after(name, result, tests, len(self.ctx.applied))
                if name == "read_file" and result.ok:
                    self._remember_read(str((args or {}).get("path", "")))
            if native:
                messages.append({"role": "tool", "tool_call_id": cid, "content": result.output})
            else:
                results.append(prompts.result_message(name, result.ok, result.output))
        if reason is not None:
            results.append(prompts.BLOCKS_AGAIN_CALL.format(reason=reason) if self._blocks
                           else prompts.retry_prompt(reason, list_files(self.root)))
        if results:
            messages.append({"role": "user", "content": "\n\n".join(results)})
        return tests

    def _remember_read(self, path: str) -> None:
        rel = next(iter(mentioned_files(self.root, path)), None)
        if rel and rel not in self._read:
            self._read.append(rel)

    def _write_blocks(self, messages: list[dict], text: str, task: str, edits: list[Edit] | None = None,
                      ) -> dict | None:
        """Apply the reply's code blocks for workspace files and send the result back (in blocks mode with
        the tests' result: they run after each change). None: the reply has none, or they change nothing,
        so it is the final answer; else {"tests": the test run or None, "summary": what was done}.
        ``edits``: what ``text`` says, already parsed (the first edit's whole-file change)."""
        tests = None
        try:
            writes = None if edits is not None else find_writes(
                text, self.root, mentioned_files(self.root, task) + self._read, self._focus)
        except WriteError as e:
            result = ToolResult(False, f"write refused: {e}")
            writes = None
            self.event("tool_result", {"name": "write", "ok": False, "output": result.output, "data": {}})
        if writes == []:
            return None
        if writes is not None or edits is not None:
            edits = edits if edits is not None else [w.edit for w in writes]
            self.event("tool_call", {"name": "write", "arguments": {
                "files": [e.path for e in edits], "how": [w.how for w in writes] if writes else ["edit"]}})
            before = len(self.ctx.applied)
            result = apply_edits(self.ctx, "write", edits)
            if result.unchanged:
                self.event("tool_result", {"name": "write", "ok": True, "output": "no change", "data": {}})
                if not self._blocks or not self._has_tests:
                    return None  # the code already in the files: a summary that shows it
                result = ToolResult(True, "nothing changed: that is the code the file already has")
            else:
                self.event("tool_result", {"name": "write", "ok": result.ok, "output": result.output,
                                           "data": result.data})
            self._edit_events(before, {w.edit.path: w.lines for w in writes or []})
        messages.append({"role": "assistant", "content": text})
        feedback = prompts.result_message("write", result.ok, result.output)
        if not result.ok:
            follow = prompts.BLOCKS_AGAIN if self._blocks else "Send the code again, fixed."
        elif self._blocks and self._has_tests:
            ran = self._tool("run_tests", {})
            tests = _tests_after("run_tests", ran, None, len(self.ctx.applied))
            feedback += "\n\n" + prompts.result_message("run_tests", ran.ok, ran.output)
            follow = "" if ran.ok else prompts.BLOCKS_TESTS_FAIL + prompts.task_reminder(task)
        else:
            follow = ("Check it with run_tests, or reply with a short summary (no code) if the task is done."
                      if not self._blocks else prompts.BLOCKS_DONE)
        messages.append({"role": "user", "content": feedback + ("\n\n" + follow if follow else "")})
        return {"tests": tests, "summary": "The tests pass." if tests and tests["passed"] else ""}

    def _edit_first(self, messages: list[dict], task: str) -> dict | None:
        """Blocks mode on one named file with tests: first the single edit ``corolla edit`` makes (the whole
        format, on the task's lines or the file), applied and tested like a written block; the loop goes on
        from its result. None when it does not apply or the model's edit was refused (nothing changed)."""
        files = [f for f in mentioned_files(self.root, task) if not is_test_file(f)]  # "do not change the tests"
        if not (self.config.edit_first and self._blocks and self._has_tests and len(files) == 1):
            return None
        from corolla.assistant.core import Assistant  # the edit command's prompt and checks, one place

        rel, lines = files[0], self._focus.current(files[0])
        # which tests fail before it: a first edit that makes one of the others fail is undone (below)
        before = _tests_after("run_tests", self._tool("run_tests", {}), None, len(self.ctx.applied))
        applied, focus, asked = len(self.ctx.applied), copy.deepcopy(self._focus), len(messages)
        # the edit's exchange is a step of this agent's transcript (its events), not a session of its own in
        # the user's history: the Assistant keeps it in a throwaway store
        with tempfile.TemporaryDirectory(prefix="corolla-edit-first-") as scratch:
            first = self._edit_first_in(Assistant(self.llm, self.root, SessionStore(Path(scratch))), messages, task,
                                        rel, lines)
        broke = _newly_failing(before, first["tests"] if first else None)
        if not broke or len(self.ctx.applied) != applied + 1:
            return first
        # first, do no harm: the loop starts from the code as it was (the loop alone did better than going on
        # from such an edit: the model kept resending the code that broke them)
        proposal = self.ctx.applied[-1]
        try:
            revert(self.root, proposal)
        except EditError as e:  # the file changed meanwhile (the tests wrote to it?): go on from it as it is
            self.event("tool_result", {"name": "edit_first", "ok": False, "data": {},
                                       "output": f"the first edit broke {', '.join(broke)} but cannot be undone: {e}"})
            return first
        self.ctx.applied.pop()
        self._focus = focus
        del messages[asked:]
        self.event("tool_result", {"name": "edit_first", "ok": False, "data": {"undone": list(proposal.paths)},
                                   "output": "the first edit was undone: it made tests fail that passed before it: "
                                             + ", ".join(broke)})
        self.event("edit", {"diff": unified_diff([FileChange(c.path, c.after, c.before) for c in proposal.changes]),
                            "files": list(proposal.paths), "undo": True})
        return None

    def _edit_first_in(self, assistant, messages: list[dict], task: str, rel: str,
                       lines: tuple[int, int] | None) -> dict | None:
        state = assistant.state(current_file=rel, selection=lines, open_files=(rel,))
        session_id = assistant.store.create(title_from(task), kind="edit").id
        try:
            outcome = assistant.propose_edit(_instruction(task, rel), state, session_id, fmt="whole")
        except EditError as e:
            self.event("tool_result", {"name": "edit_first", "ok": False, "output": f"refused: {e}", "data": {}})
            # the model's code may still be a blocks-mode change (e.g. only the function it rewrote, where the
            # whole file was asked for): the loop's own parser takes it; else the loop starts from its own first message
            replies = [m.content for m in assistant.store.messages(session_id) if m.role == "assistant"]
            code = next((r for r in reversed(replies) if "```" in r), None)  # the last reply with code
            if code is None:
                return None
            self.event("assistant", {"step": 1, "text": code, "native": False, "tool_calls": [], "edit_first": True})
            return self._write_blocks(messages, code, task)
        changes = outcome.proposal.changes
        if not changes or len(changes) != 1 or changes[0].path != rel or changes[0].before is None:
            return None
        after = changes[0].after
        label = f"{rel}:{lines[0]}-{lines[1]}" if lines else rel
        new_lines = None
        if lines:  # the new version of the task's lines, as a blocks-mode reply would send it
            moved = map_range(changes[0].before.splitlines(), after.splitlines(), *lines)
            new_lines = "\n".join(after.splitlines()[moved[0] - 1:moved[1]]) if moved else None
        reply = code_block(label, new_lines if new_lines is not None else after.rstrip(), rel)
        self.event("assistant", {"step": 1, "text": reply, "native": False, "tool_calls": [], "edit_first": True})
        return self._write_blocks(messages, reply, task, [Edit(rel, changes[0].before, after, line=1)])

    def _blocks_mode(self, task: str) -> bool:
        return uses_blocks(self.config.mode, bool(mentioned_files(self.root, task)))

    def _first(self, task: str) -> str:
        """The first user message: the task (blocks mode: after the files it names, so no step is spent reading,
        and after the lines it names, if it does)."""
        if not self._blocks:
            return task
        shown = []
        for rel in mentioned_files(self.root, task)[:3]:
            text = read_text(self.root, rel)
            if text is not None and len(text) <= MAX_SHOWN_FILE_CHARS:
                shown.append(prompts.file_block(rel, text))
                self._read.append(rel)
        for rel, (a, b) in self._focus.ranges.items():  # after the files: the lines to change
            text = read_text(self.root, rel) or ""
            if rel in self._read and (a, b) != (1, len(text.splitlines())):
                shown.append(prompts.range_block(rel, a, b, text))
        return "\n\n".join([*shown, task])  # the task last, nearest the answer: small models follow it better

    def _tool(self, name: str, args: dict) -> ToolResult:
        before, ran = len(self.ctx.applied), len(self.ctx.commands)
        try:
            result = run_tool(self.ctx, name, args)
        except (AssistantError, OSError, ValueError) as e:
            result = ToolResult(False, f"{name} failed: {e}")
        self._commands += self.ctx.commands[ran:]
        if result.data.get("refused"):
            self._commands.append({"command": result.data.get("command"), "exit_code": None, "refused": True})
        self.event("tool_result", {"name": name, "ok": result.ok, "output": result.output, "data": result.data})
        self._edit_events(before)
        return result

    def _edit_events(self, before: int, replaced: dict | None = None) -> None:
        """An ``edit`` event for each proposal applied since ``before`` (and the focus follows the lines they
        moved; ``replaced``: the line range each file's write replaced, when it was a range write)."""
        for proposal in self.ctx.applied[before:]:
            self._focus.follow(proposal.changes, replaced)
            self.event("edit", {"diff": proposal.diff, "files": list(proposal.paths)})

    def _report(self, status: str, summary: str, error: str, steps: int, tests: dict | None,
                first_edit: int) -> AgentReport:
        changes = net_changes(self.root, self.ctx.applied[first_edit:])
        if tests is not None and tests.get("edits_seen", 0) < len(self.ctx.applied):
            tests = {**tests, "stale": True}
        if tests is not None:
            tests = {k: v for k, v in tests.items() if k != "edits_seen"}
        return AgentReport(status, summary, [c.path for c in changes], list(self._commands),
                           steps, tests, unified_diff(changes), error, self.session_id)


# --- helpers -----------------------------------------------------------------------------------------
def _newly_failing(before: dict | None, after: dict | None) -> list[str]:
    """The tests failing in ``after`` that passed in ``before`` (test runs as :func:`_tests_after` gives them);
    none when either run does not say which failed."""
    if before is None or after is None or after["passed"] or before.get("failing") is None \
            or after.get("failing") is None:
        return []
    failed = set(before["failing"])  # a test file that failed to import before stands for all of its tests
    return sorted(t for t in after["failing"] if t not in failed and t.split("::")[0] not in failed)


def _instruction(task: str, path: str) -> str:
    """What the edit command is asked, from an agent's task: its first line, without a leading "In PATH[ lines
    A-B]:" (the edit shows the file and its lines). The rest of the task (how to check, what not to touch) is
    for the loop: with it in the edit's request the small model often sent the code back unchanged."""
    first = next((line.strip() for line in task.splitlines() if line.strip()), task.strip())
    rest = re.sub(rf"^in\s+`?{re.escape(path)}`?(?::\d+-\d+|\s+lines?\s+\d+(?:\s*-\s*\d+)?)?\s*[:,]\s*", "", first,
                  flags=re.IGNORECASE)
    return rest if rest else first


def _focus(root: Path, task: str) -> Focus:
    """The line ranges of workspace files that ``task`` names and that lie inside them."""
    focus = Focus()
    for rel, (a, b) in task_ranges(root, task).items():
        if b <= len((read_text(root, rel) or "").splitlines()):
            focus.add(rel, a, b)
    return focus


def _tests_after(name: str, result: ToolResult, tests: dict | None, edits_seen: int) -> dict | None:
    """The last test run's outcome (``edits_seen``: how many edits were applied when it ran)."""
    if name != "run_tests":
        return tests
    data = result.data or {}
    exit_code = data.get("exit_code")
    passed = data.get("passed", exit_code == 0 and not data.get("timed_out") and not data.get("refused"))
    return {"command": data.get("command"), "exit_code": exit_code, "passed": bool(passed), "edits_seen": edits_seen,
            "failing": data.get("failing")}


def net_changes(root: Path, applied) -> list[FileChange]:
    """Each file the proposals touched, from before the first of them to what is on disk now."""
    first: dict[str, str | None] = {}
    for proposal in applied:
        for change in proposal.changes:
            first.setdefault(change.path, change.before)
    out = []
    for path, before in first.items():
        now = read_text(Path(root), path)
        if now != before:
            out.append(FileChange(path, before, now or ""))
    return out


def _shrink(messages: list[dict], limit: int) -> None:
    """Cut the oldest tool results (never the system prompt, the task or the last exchange) until the
    conversation fits ``limit`` characters: a small model's context window is small."""
    def size() -> int:
        return sum(len(m.get("content") or "") for m in messages)

    for m in messages[2:-2]:
        if size() <= limit:
            return
        content = m.get("content") or ""
        is_result = m["role"] == "tool" or (m["role"] == "user" and content.startswith("Result of "))
        if is_result and not content.endswith(_CUT_NOTE) and len(content) > 400:
            m["content"] = content[:300] + _CUT_NOTE
