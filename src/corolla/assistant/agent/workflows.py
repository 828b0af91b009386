"""Two workflows built on the agent: tests until green, and a refactor that keeps the tests green.

Both guard the project's existing tests (:mod:`.guard`): before anything runs, the test functions of
every Python test file that exists are snapshotted; a write of the agent that would delete or weaken
one of them is refused as it is made (in every mode: a tool's edit or a code block), the reason sent
back to the model; and after every round, a test that disappeared, lost asserts or became skipped
anyway (a command changed the file) is a violation, and the test file is put back as it was at the
start of the round (applied as an edit, so a later revert stays exact). An agent that "fixes" failing
tests by deleting them gets nowhere.

The agent works in :data:`.modes.WORKFLOW_MODE` unless ``config`` says otherwise; its tasks are worded
for the mode it will use (in blocks mode the tests run after each change by themselves).

``refactor`` runs the tests before and after; if they were green and are red, the agent gets a
bounded number of fix rounds, and if the tests are still red everything it changed is reverted.
"""

from __future__ import annotations

import dataclasses
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corolla.assistant import commands
from corolla.assistant.agent import prompts
from corolla.assistant.agent.guard import TestGuard, check_tests, snapshot_tests
from corolla.assistant.agent.loop import Agent, AgentConfig, net_changes
from corolla.assistant.agent.modes import WORKFLOW_MODE, uses_blocks
from corolla.assistant.agent.policy import CommandPolicy
from corolla.assistant.agent.report import WorkflowReport
from corolla.assistant.agent.tools import ToolContext, detect_test_command
from corolla.assistant.agent.writes import mentioned_files
from corolla.assistant.context import find_instructions
from corolla.assistant.edits import (
    Edit,
    FileChange,
    Proposal,
    Target,
    apply,
    format_instructions,
    parse_reply,
    propose,
    revert,
    unified_diff,
)
from corolla.assistant.errors import AssistantError, EditError
from corolla.assistant.llm import LLM
from corolla.assistant.sessions import SessionStore
from corolla.assistant.workspace import read_text

OUTPUT_CHARS = 3000  # the tail of a test run shown to the model and kept per round


def _restore(root: Path, ctx: ToolContext, texts: dict[str, str]) -> None:
    """Put files back to ``texts`` as one applied edit (kept in ``ctx.applied``, so reverting stays exact)."""
    changes = []
    for path, text in texts.items():
        now = read_text(root, path)
        if now != text:
            changes.append(FileChange(path, now, text))
    if changes:
        proposal = Proposal(tuple(changes), unified_diff(changes), ("restored existing tests",))
        apply(root, proposal)
        ctx.applied.append(proposal)


def revert_all(root: Path, applied: list[Proposal]) -> list[str]:
    """Undo the net effect of ``applied`` on the workspace in one atomic step; returns the paths restored."""
    changes = net_changes(root, applied)
    missing = [c for c in changes if read_text(root, c.path) is None]  # deleted by a command: written back
    changes = [c for c in changes if c not in missing]
    if changes:
        revert(root, Proposal(tuple(changes), unified_diff(changes)))
    for c in missing:
        if c.before is not None:
            (root / c.path).parent.mkdir(parents=True, exist_ok=True)
            (root / c.path).write_text(c.before)
    return [c.path for c in changes + missing]


# --- shared machinery ------------------------------------------------------------------------------
class _Run:
    """What one workflow run shares: the tool context, the agent, the store, the guard, the test runs."""

    def __init__(self, name: str, llm: LLM, root: Path, policy: CommandPolicy, store: SessionStore | None,
                 session_id: str | None, config: AgentConfig | None, stop: threading.Event | None,
                 clock: Callable[[], float], on_event: Callable[[str, Any], None] | None, title: str):
        self.name = name
        self.llm = llm
        self.root = Path(root).resolve()
        self.policy = policy
        self.store = store
        if store is not None and session_id is None:
            session_id = store.create(title, kind="workflow", meta={"workflow": name}).id
        self.snapshot = snapshot_tests(self.root)
        # every write is checked against the tests as they were before the workflow (not the tests it adds);
        # strict: the workflow's prompts quote failing tests by name, which must not allow removing them
        self.ctx = ToolContext(root=self.root, policy=policy, guard=TestGuard(self.snapshot, lazy=False, strict=True))
        # no edit-first step: a workflow's tasks are its own prompts about failing tests, not one instruction
        # for one file that the edit command could carry out
        config = dataclasses.replace(config or AgentConfig(max_steps=12, mode=WORKFLOW_MODE), edit_first=False)
        self.agent = Agent(llm, self.root, policy=policy, store=store, session_id=session_id, config=config,
                           stop=stop, clock=clock, ctx=self.ctx, on_event=on_event)
        self.results: list[dict] = []
        self.refused: list[str] = []
        self.reports: list[str] = []
        self.rounds = 0

    def event(self, type: str, data: Any) -> None:
        self.agent.event(type, data)

    def round_start(self) -> dict[str, str]:
        """The texts of the guarded test files now (what a violation is put back to)."""
        self.rounds += 1
        return {p: t for p in self.snapshot if (t := read_text(self.root, p)) is not None}

    def worded(self, make: Callable[..., str], *args) -> str:
        """The task ``make(*args, blocks=...)`` worded for the mode the agent will run it in."""
        blocks = uses_blocks(self.agent.config.mode, bool(mentioned_files(self.root, make(*args))))
        return make(*args, blocks=blocks)

    def run_agent(self, task: str, mode: str | None = None) -> None:
        config = self.agent.config
        if mode is not None:
            self.agent.config = dataclasses.replace(config, mode=mode)
        try:
            report = self.agent.run(task)
        finally:
            self.agent.config = config
        self.reports.append(f"Round {self.rounds}:\n{report.to_text()}")

    def guard(self, texts: dict[str, str]) -> None:
        problems = check_tests(self.root, self.snapshot)
        if not problems:
            return
        violations = [v for found in problems.values() for v in found]
        self.refused += violations
        _restore(self.root, self.ctx, {p: texts[p] for p in problems if p in texts})
        self.event("refused", {"round": self.rounds, "violations": violations, "restored": sorted(problems)})

    def test(self, command: list[str], label: str) -> dict:
        line = shlex.join(command)
        result = self.policy.run(line, self.root)
        output = result.output or (f"refused: {result.reason}" if result.refused else "")
        output = output if len(output) <= OUTPUT_CHARS else "[...]\n" + output[-OUTPUT_CHARS:]
        passed = result.exit_code == 0 and not result.timed_out and not result.refused
        entry = {"round": label, "command": line, "exit_code": result.exit_code, "passed": passed, "output": output}
        self.results.append(entry)
        self.event("tests", entry)
        return entry

    def finish(self, status: str, error: str = "") -> WorkflowReport:
        changes = net_changes(self.root, self.ctx.applied)
        written = self.ctx.guard.refused if self.ctx.guard is not None else []  # refused as they were written
        refused = [*written, *(v for v in self.refused if v not in written)]
        report = WorkflowReport(status, self.rounds, "\n".join(self.reports), [c.path for c in changes],
                                self.results, refused, unified_diff(changes), self.name, error,
                                self.agent.session_id)
        self.event("workflow_report", report.to_json())
        return report


# --- tests until green -----------------------------------------------------------------------------
def tests_until_green(llm: LLM, root: Path, file: str, *, rounds: int = 3, policy: CommandPolicy,
                      store: SessionStore | None = None, session_id: str | None = None,
                      config: AgentConfig | None = None, stop: threading.Event | None = None,
                      clock: Callable[[], float] = time.monotonic,
                      on_event: Callable[[str, Any], None] | None = None) -> WorkflowReport:
    """Write tests for ``file`` (round 1: the assistant's /tests prompt), run them, and let the agent
    fix the tests or the code from the failures, for at most ``rounds`` rounds in all."""
    run = _Run("tests until green", llm, root, policy, store, session_id, config, stop, clock, on_event,
               f"tests for {file}")
    root = run.root
    if read_text(root, file) is None:
        return run.finish("error", f"no file {file} in {root}")
    test_rel = commands.test_path(root, file)
    command = _test_command(root, file, test_rel)
    if command is None:
        return run.finish("error", f"no test command found for {root} (pytest, npm test, go test, cargo test)")
    run.event("workflow", {"workflow": "tests", "file": file, "test_file": test_rel, "rounds": rounds})
    texts = run.round_start()
    try:
        written = _generate_tests(llm, root, file, test_rel, run.ctx)
        run.reports.append(f"Round 1: wrote tests in {test_rel}.")
    except EditError as e:
        written = False
        run.reports.append(f"Round 1: the generated tests could not be written: {e}")
    except AssistantError as e:
        return run.finish("error", str(e))
    run.guard(texts)
    result = run.test(command, "round 1") if written else None
    while not (result and result["passed"]) and run.rounds < rounds and not run.agent.stop.is_set():
        texts = run.round_start()
        if result is None:  # a new file: written with write_file, in tools mode (a code block edits files that exist)
            task = (f"Write tests for {file} in {test_rel} using "
                    f"{commands.detect_test_framework(root, file)} (write_file), then call run_tests.")
            run.run_agent(task, mode="tools")
        else:
            run.run_agent(run.worded(prompts.fix_tests_task, file, test_rel, result["output"]))
        run.guard(texts)
        result = run.test(command, f"round {run.rounds}")
    if result is None:
        return run.finish("error", "no tests were written")
    return run.finish("green" if result["passed"] else "red")


def _test_command(root: Path, file: str, test_rel: str) -> list[str] | None:
    command = detect_test_command(root)
    if command is None and file.endswith(".py"):
        command = ["python", "-m", "pytest", "-q"]
    if command is not None and "pytest" in command:
        command = [*command, test_rel]
    return command


def _generate_tests(llm: LLM, root: Path, file: str, test_rel: str, ctx: ToolContext) -> bool:
    """One completion with the /tests prompt; the test file is written (appended to if it exists)."""
    code = read_text(root, file) or ""
    target = Target(test_rel)
    instructions = "\n\n".join(i.body for i in find_instructions(root, file))
    task = commands.COMMANDS["tests"].task.format(framework=commands.detect_test_framework(root, file))
    user = "\n\n".join([commands.fence(file, code), task,
                        f"The test file will be saved as {test_rel}; import the code under test from its module."])
    messages = [{"role": "system", "content": commands.system_prompt(instructions,
                                                                     edit_format=format_instructions("whole", target))},
                {"role": "user", "content": user}]
    reply = llm.complete(messages).content
    edits = parse_reply("whole", reply, target=target, default_path=test_rel)
    existing = read_text(root, test_rel)
    if existing is not None and existing.strip():  # keep the tests that are there; add the new ones after
        new = "\n".join(e.new for e in edits)
        edits = [Edit(test_rel, existing, existing.rstrip("\n") + "\n\n\n" + new.lstrip("\n"))]
    proposal = propose(root, edits)
    if not proposal.changes:
        raise EditError("the generated tests change nothing")
    apply(root, proposal)
    ctx.applied.append(proposal)
    return True


# --- refactor ------------------------------------------------------------------------------------
def refactor(llm: LLM, root: Path, request: str, *, policy: CommandPolicy, store: SessionStore | None = None,
             session_id: str | None = None, config: AgentConfig | None = None, fix_rounds: int = 1,
             stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
             on_event: Callable[[str, Any], None] | None = None) -> WorkflowReport:
    """Refactor as asked, keeping the tests as green as they were: tests before, the agent, tests after;
    green turned red gets ``fix_rounds`` fix rounds, then everything the agent changed is reverted."""
    run = _Run("refactor", llm, root, policy, store, session_id, config, stop, clock, on_event, request)
    root = run.root
    command = detect_test_command(root)
    run.event("workflow", {"workflow": "refactor", "request": request, "test_command": command})
    before = run.test(command, "before") if command else None
    texts = run.round_start()
    run.run_agent(run.worded(prompts.refactor_task, request, shlex.join(command) if command else None))
    run.guard(texts)
    if command is None:
        return run.finish("untested", "no test command found: the change was not checked by tests")
    after = run.test(command, f"round {run.rounds}")
    if not before["passed"]:
        return run.finish("green" if after["passed"] else "red",
                          "" if after["passed"] else "the tests failed before the refactoring too")
    for _ in range(fix_rounds):
        if after["passed"] or run.agent.stop.is_set():
            break
        texts = run.round_start()
        run.run_agent(run.worded(prompts.refactor_fix_task, request, after["output"]))
        run.guard(texts)
        after = run.test(command, f"round {run.rounds}")
    if after["passed"]:
        return run.finish("green")
    reverted = revert_all(root, run.ctx.applied)
    run.event("reverted", {"files": reverted})
    check = run.test(command, "after revert")
    note = (f"the tests passed before and fail after the refactoring and {fix_rounds} fix round(s): every change "
            f"was reverted ({', '.join(reverted) or 'nothing to revert'})")
    if not check["passed"]:
        note += "; the tests still fail after the revert (a command may have changed something else)"
    return run.finish("reverted", note)
