"""What an agent run and a workflow run hand back, and how it reads: :class:`AgentReport` (what changed,
what ran, whether the tests pass, what is left) and :class:`WorkflowReport`, as text for a person and as
JSON for the session store and the API."""

from __future__ import annotations

import dataclasses

STATUSES = ("done", "step_cap", "time_cap", "repeating", "stopped", "error")  # how an agent run ended


@dataclasses.dataclass
class AgentReport:
    status: str  # one of STATUSES
    summary: str  # the model's final answer
    changed_files: list[str]
    commands: list[dict]  # {"command", "exit_code", "timed_out", "duration_s", ...} in the order they ran
    steps: int
    tests: dict | None  # the last run_tests: {"command", "exit_code", "passed", "stale"}
    diff: str = ""  # the net change of the run
    error: str = ""  # why the run ended early (status "error", caps)
    session_id: str | None = None

    def diffstat(self) -> list[tuple[str, int, int]]:
        """(path, lines added, lines removed) per changed file, from :attr:`diff`."""
        return diffstat(self.diff)

    def left(self) -> list[str]:
        """What is left to do or check, in words."""
        out = []
        if self.status == "step_cap":
            out.append(f"the step cap was reached after {self.steps} model replies: the task may be unfinished")
        elif self.status == "time_cap":
            out.append("the time cap was reached: the task may be unfinished")
        elif self.status == "repeating":
            out.append("the model sent one of its earlier replies again (it was stuck): the task may be unfinished")
        elif self.status == "stopped":
            out.append("the run was stopped on request: the task may be unfinished")
        elif self.status == "error":
            out.append(f"the run ended with an error: {self.error}")
        if self.tests is None:
            if self.changed_files:
                out.append("the tests were not run after the changes")
        elif not self.tests.get("passed"):
            out.append(f"the tests fail (`{self.tests.get('command')}` exited {self.tests.get('exit_code')})")
        elif self.tests.get("stale"):
            out.append("files changed after the last test run: run the tests again")
        refused = [c["command"] for c in self.commands if c.get("refused")]
        if refused:
            out.append("refused commands (run them yourself if they are needed): " + ", ".join(refused))
        return out

    def to_text(self) -> str:
        lines = [f"Agent {self.status} after {self.steps} step{'s' if self.steps != 1 else ''}."]
        if self.summary.strip():
            lines += ["", self.summary.strip()]
        stat = self.diffstat()
        lines.append("")
        if stat:
            width = max(len(p) for p, _, _ in stat)
            lines.append(f"Changed {len(stat)} file{'s' if len(stat) != 1 else ''}:")
            lines += [f"  {p.ljust(width)} | +{a} -{r}" for p, a, r in stat]
        else:
            lines.append("Changed no files.")
        if self.commands:
            lines.append("Ran:")
            for c in self.commands:
                how = ("refused" if c.get("refused") else "timed out" if c.get("timed_out")
                       else f"exit {c.get('exit_code')}")
                lines.append(f"  {c.get('command')}  -> {how}")
        if self.tests is not None:
            verdict = "pass" if self.tests.get("passed") else "FAIL"
            lines.append(f"Tests: {verdict} (`{self.tests.get('command')}`, exit {self.tests.get('exit_code')})")
        else:
            lines.append("Tests: not run")
        left = self.left()
        lines.append("Left: " + ("nothing" if not left else ""))
        lines += [f"  - {item}" for item in left]
        return "\n".join(lines).rstrip() + "\n"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class WorkflowReport:
    status: str  # "green" | "red" | "reverted" | "untested" | "error"
    rounds: int
    report: str  # the agent's reports, round by round
    changed_files: list[str]
    test_results: list[dict]  # per test run: {"round", "command", "exit_code", "passed", "output"}
    refused: list[str] = dataclasses.field(default_factory=list)  # changes to existing tests that were reverted
    diff: str = ""
    workflow: str = ""
    error: str = ""
    session_id: str | None = None

    def to_text(self) -> str:
        rounds = f"{self.rounds} round{'s' if self.rounds != 1 else ''}"
        lines = [f"{self.workflow or 'workflow'}: {self.status} after {rounds}."]
        if self.error:
            lines.append(self.error)
        for r in self.test_results:
            verdict = "pass" if r["passed"] else "FAIL"
            lines.append(f"  {r['round']}: tests {verdict} (`{r['command']}`, exit {r['exit_code']})")
        if self.refused:
            lines.append("Refused, the tests kept as they were (existing tests must not be deleted or weakened):")
            lines += [f"  - {v}" for v in self.refused]
        stat = diffstat(self.diff)
        if stat:
            lines.append("Changed files:")
            lines += [f"  {p} | +{a} -{r}" for p, a, r in stat]
        else:
            lines.append("Changed no files.")
        if self.report.strip():
            lines += ["", self.report.strip()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def diffstat(diff: str) -> list[tuple[str, int, int]]:
    """(path, lines added, lines removed) per file of a unified diff."""
    stats: dict[str, list[int]] = {}
    current = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            current = line[4:].removeprefix("b/")
            stats.setdefault(current, [0, 0])
        elif line.startswith("--- ") or current is None:
            continue
        elif line.startswith("+"):
            stats[current][0] += 1
        elif line.startswith("-"):
            stats[current][1] += 1
    return [(p, a, r) for p, (a, r) in stats.items()]
