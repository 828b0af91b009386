"""Slash commands and the prompts behind them, written for small models: one task, said plainly,
with the code and context right there, and the exact reply format spelled out."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from corolla.assistant.errors import UnknownCommandError
from corolla.assistant.fences import code_block
from corolla.assistant.workspace import peek_text

BASE_SYSTEM = ("You are corolla, a coding assistant inside the user's editor. Be correct and concise. "
               "Use markdown; put code in fenced blocks tagged with the language.")


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    summary: str
    task: str  # what the system prompt asks for, whatever the context holds
    edits: bool = False  # the reply is parsed into an edit proposal
    needs_code: bool = True  # needs a file or selection
    # (piece of context, what to add when the prompt has it, what to add when it has not): a prompt
    # mentions only what is there (a model told of "the project's instructions" that it cannot see
    # talks about them, issue 20)
    clauses: tuple[tuple[str, str, str], ...] = ()

    def prompt(self, present: set[str] | frozenset[str] = frozenset(), **fields: str) -> str:
        """The task for a prompt holding the context ``present`` ("instructions", "subjects")."""
        extra = [with_it if piece in present else without for piece, with_it, without in self.clauses]
        return " ".join(x for x in (self.task.format(**fields) if fields else self.task, *extra) if x)


_REVIEW_FORM = "FILE:LINE: what is wrong, and what goes wrong because of it\n"
# how /review asks (AssistantConfig.review_style); the default is what benchmarks/review.py measured best
REVIEW_TASKS = {
    # straight to the list
    "list": (
        "Review the change above: find the bugs it introduces. Lines marked + were added and lines marked - "
        "removed; the numbers are line numbers after the change. Compare each changed line with the line it "
        "replaced and with what its function is meant to do (its name, docstring and the code around it). Look "
        "for: a wrong argument or value, an off-by-one, an inverted or wrong condition, a wrong comparison or "
        "operator, a wrong variable or key, swapped arguments, a missing return, an error that is now ignored, a "
        "changed default.\nReply with one line per bug, in this form:\n" + _REVIEW_FORM +
        "If the change introduces no bug, reply with exactly: No bugs found.\n"
        "No style remarks, no suggestions of tests, no general advice."),
    # one sentence on what the change does to the function's behaviour first (a small model reasons
    # its way to the bug it would otherwise wave through), then the list
    "reasoned": (
        "Review the change above. Lines marked + were added and lines marked - removed; the numbers are line "
        "numbers after the change. First, in one sentence, say how the change alters what the function does. "
        "Then list the bugs the change introduces, one per line, in this form:\n" + _REVIEW_FORM +
        "If the function still does what its name and docstring say, end with exactly: No bugs found.\n"
        "No style remarks, no suggestions of tests, no general advice."),
    # a verdict on each changed line: the escape of "No bugs found." above is what both coders answered for
    # every seeded bug (benchmarks/review.py); made to judge each line, they name it
    "verdicts": (
        "For each changed line listed above, decide whether the change is a bug: does the new code give a wrong "
        "result for some input, given what the function is meant to do (its name, its docstring, the code around "
        "it)? Think about one concrete input. Answer one line per changed line, starting with its number, in one "
        "of these forms:\nline N: BUG: what is wrong, and what goes wrong because of it\n"
        "line N: OK: why the results stay right"),
}
# by benchmarks/review.py (2026-12-07, 20 seeded bugs, 4 safe changes): "list" answered "No bugs found." to every
# bug with both coders (0/20); "verdicts" names every changed line a bug (20/20, and 4/4 false alarms). With these
# models a review cannot yet tell a bug from a safe change: the default is the one that does not hide a bug
DEFAULT_REVIEW_STYLE = "verdicts"
REVIEW_TASK = REVIEW_TASKS[DEFAULT_REVIEW_STYLE]

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("explain", "explain the selected code or file",
            "Explain the code above: what it does, how it works, and anything surprising or risky.",
            clauses=(("instructions", "Match the depth the project's instructions ask for.",
                      "Explain it for a working programmer."),)),
    Command("fix", "fix a bug, given an error or diagnostic",
            "Fix the problem described by the user (an error message, a failing test or a diagnostic). Change "
            "only what the fix needs and keep everything else as it is.", edits=True),
    Command("doc", "add docstrings and comments",
            "Add docstrings (in the language's usual style) to the functions and classes above, and short comments "
            "where the code is not obvious. Do not change any behaviour.", edits=True),
    Command("tests", "write tests in the project's test framework",
            "Write unit tests for the code above using {framework}. Cover normal cases, edge cases and errors. "
            "Reply with one complete test file in one fenced code block: imports included, nothing left out.",
            edits=True),
    Command("harden", "add error handling in the project's style",
            "Add error handling to the code above following the project's conventions: validate inputs, raise "
            "clear errors of the kinds the project already uses, and handle failures of I/O and external calls. "
            "Keep the behaviour for valid input unchanged.", edits=True),
    Command("review", "review staged, unstaged or branch changes", REVIEW_TASK, needs_code=False,
            clauses=(("instructions", "Also list, in the same form, departures from the project's instructions.",
                      ""),)),
    Command("commit", "write a commit message for the staged changes",
            "Write a git commit message for the staged diff above. A subject line under 72 characters, then (only "
            "when useful) a blank line and a short body saying why. Reply with the message only: no quotes, no code "
            "fence, no preamble.",
            needs_code=False,
            clauses=(("subjects", "Follow the style of the project's recent commit subjects shown.", ""),)),
)}

NO_BUGS = "No bugs found."


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of a review: ``path:line: text``."""

    path: str
    line: int
    text: str


_FINDING = re.compile(r"^\s*(?:[-*+]\s+|\d+[.)]\s+)?[`*]*(?P<path>[^\s:`*]+?):(?P<line>\d+)(?:-\d+)?[`*]*"
                      r"\s*[:\-\u2013]?\s*(?P<text>.*)$")


def parse_findings(reply: str) -> list[Finding]:
    """The ``FILE:LINE: problem`` lines of a review reply (bullets, numbering, backticks and bold tolerated)."""
    found = []
    for line in reply.splitlines():
        match = _FINDING.match(line)
        if match and ("." in match["path"] or "/" in match["path"]):
            found.append(Finding(match["path"], int(match["line"]), match["text"].strip()))
    return found


SLASH = re.compile(r"^/([a-z-]+)\b\s*(.*)$", re.S)


def parse_command(text: str) -> tuple[Command | None, str]:
    """(the slash command, the rest of the text); (None, text) for plain chat."""
    match = SLASH.match(text.strip())
    if not match:
        return None, text
    name = {"tests": "tests", "test": "tests", "docs": "doc", "commit-msg": "commit"}.get(match[1], match[1])
    if name not in COMMANDS:
        known = ", ".join("/" + n for n in COMMANDS)
        raise UnknownCommandError(f"unknown command /{match[1]}: the commands are {known}")
    return COMMANDS[name], match[2].strip()


def system_prompt(instructions: str, task: str = "", edit_format: str = "") -> str:
    parts = [BASE_SYSTEM]
    if instructions.strip():
        parts.append("Follow the project's instructions:\n" + instructions.strip())
    if task:
        parts.append(task)
    if edit_format:
        parts.append(edit_format)
    return "\n\n".join(parts)


def fence(path: str, text: str, first_line: int | None = None) -> str:
    """``path`` (with its line range from ``first_line``) and then ``text`` in a fenced block."""
    last = (first_line or 1) + max(len(text.splitlines()), 1) - 1
    where = f"{path}" + (f" (lines {first_line}-{last})" if first_line else "")
    return code_block(where, text.rstrip("\n"), path)


# --- tests: the project's framework and where its tests live ------------------------------------
def detect_test_framework(root: Path, path: str) -> str:
    """A description of the framework the project's own tests use, for ``path``'s language."""
    suffix = Path(path).suffix.lower()
    if suffix == ".py":
        text = " ".join(peek_text(root, f) for f in ("pyproject.toml", "setup.cfg", "requirements-dev.txt",
                                                   "requirements.txt", "tox.ini"))
        if "pytest" in text or (root / "conftest.py").exists() or (root / "tests" / "conftest.py").exists():
            return "pytest (plain test functions and assert)"
        tests = [p for d in ("tests", "test") if (root / d).is_dir() for p in sorted((root / d).glob("test_*.py"))]
        first = peek_text(root, tests[0].relative_to(root).as_posix()) if tests else ""
        if "unittest" in first and "pytest" not in first:
            return "unittest (unittest.TestCase classes)"
        return "pytest (plain test functions and assert)"
    if suffix in (".js", ".mjs", ".ts", ".tsx", ".jsx"):
        try:
            package = json.loads(peek_text(root, "package.json") or "{}")
        except ValueError:
            package = {}
        deps = {**package.get("dependencies", {}), **package.get("devDependencies", {})}
        for name, label in (("vitest", "vitest"), ("jest", "jest"), ("mocha", "mocha with node:assert")):
            if name in deps or name in json.dumps(package.get("scripts", {})):
                return label
        return "node's built-in test runner (node:test and node:assert)"
    return {".go": "Go's testing package (func TestXxx(t *testing.T))",
            ".rs": "Rust's built-in #[test] functions in a #[cfg(test)] module",
            ".java": "JUnit 5"}.get(suffix, "the project's usual test framework")


def test_path(root: Path, path: str) -> str:
    """Where the tests for ``path`` go, following the project's layout."""
    p = Path(path)
    if p.suffix == ".py":
        folder = next((d for d in ("tests", "test") if (root / d).is_dir()), None)
        name = f"test_{p.stem}.py"
        return f"{folder}/{name}" if folder else str(p.with_name(name))
    if p.suffix in (".js", ".mjs", ".ts", ".tsx", ".jsx"):
        return str(p.with_name(f"{p.stem}.test{p.suffix}"))
    if p.suffix == ".go":
        return str(p.with_name(f"{p.stem}_test.go"))
    return str(p.with_name(f"test_{p.name}"))


def commit_message_from_reply(reply: str) -> str:
    """The message alone: fences, quotes and "Commit message:" preambles small models add are removed."""
    text = reply.strip()
    fenced = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    if fenced:
        text = fenced[1].strip()
    text = re.sub(r"^(here is|here's)?\s*(a|the)?\s*(suggested\s+)?commit message\s*:?\s*\n", "", text, flags=re.I)
    text = re.sub(r"^(subject|commit message)\s*:\s*", "", text, flags=re.I)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text
