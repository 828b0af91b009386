"""Which shell commands the agent may run, and running them: allowed, asked for, or refused.

:meth:`CommandPolicy.decide` is a pure function of the command text. It parses the command with
:mod:`shlex`, splits it at ``;``, ``&&``, ``||``, ``|``, ``&`` and newlines, and requires every part
to be allowed: on the read-only/test allow-list (:data:`DEFAULT_ALLOW`) or named by an
``auto_approve`` prefix. Prefixes match whole words of the normalised command (``git status``
matches ``git status --short``, not ``git statusx``; a path to a Python interpreter counts as
``python``). What is not allowed is asked for through the ``approve`` callback, or refused when
there is none (a non-interactive run). Refused whatever the lists say: commands that name a
network host other than 127.0.0.1/localhost or download packages (:mod:`.network`), and text that
cannot be parsed. Asked for even when the first word is allowed: command substitution, subshells,
here-documents, redirections that write a file, and flags that make a read-only tool write or run
something (``find -delete``, ``sort -o``, ``pytest --basetemp``).

:meth:`CommandPolicy.run` then runs it with :func:`corolla.assistant.agent.shell.run_shell`.

Tools of MCP servers (``mcp__<server>__<tool>``) are actions of the same kind: :meth:`CommandPolicy.decide_tool`
runs a call when its server is trusted or an ``auto_approve`` entry names the tool, its server
(``mcp__<server>``) or all of them (``mcp``), and otherwise asks through the same ``approve`` callback
(refused when there is none); :meth:`CommandPolicy.authorize_tool` asks.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.agent.network import network_refusal
from corolla.assistant.agent.shell import CommandResult, run_shell

__all__ = ["DEFAULT_ALLOW", "CommandPolicy", "CommandResult", "Decision", "normalise", "split_command"]

DEFAULT_ALLOW: tuple[str, ...] = (
    # looking around (read-only)
    "ls", "cat", "head", "tail", "wc", "grep", "egrep", "fgrep", "rg", "find", "tree", "pwd", "cd", "echo",
    "printf", "true", "file", "stat", "du", "diff", "cmp", "sort", "basename", "dirname", "realpath", "which",
    "date", "whoami", "uname",
    "git status", "git diff", "git log", "git show", "git ls-files", "git blame", "git grep", "git rev-parse",
    "git branch --show-current",
    # tests and checks
    "python -m pytest", "pytest", "python -m pyflakes", "pyflakes", "python -m mypy", "mypy", "ruff check",
    "python --version", "node --version", "npm test", "npm run test", "go test", "go vet", "cargo test",
    "cargo check",
)

# flags that make an allowed tool write files or run other programs: asked for, by first word
RISKY_FLAGS: dict[str, tuple[str, ...]] = {
    "find": ("-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"),
    "sort": ("-o", "--output"),
    "tree": ("-o",),
    "rg": ("--pre",),
    "git": ("--output", "--ext-diff"),
    "pytest": ("--basetemp", "--junitxml", "--junit-xml", "--resultlog"),
    "python": ("--basetemp", "--junitxml", "--junit-xml", "--resultlog"),
    "ruff": ("--fix", "--unsafe-fixes"),
    "go": ("-exec", "-o"),
}

_SEPARATORS = {";", "&&", "||", "|", "&", "|&", ";;", ";&", ";;&"}
_WRITE_REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>", ">&", "&>|"}
_READ_REDIRECTS = {"<", "<&"}
_PUNCT = "();<>|&\n"
_PYTHON = re.compile(r"python[0-9.]*")
_HARMLESS_TARGETS = {"/dev/null", "/dev/stdout", "/dev/stderr"}


@dataclass(frozen=True)
class Decision:
    """What to do with a command: ``"run"`` it, ``"ask"`` a person, or ``"refuse"`` it; and why."""

    action: str
    reason: str


@dataclass(frozen=True)
class Part:
    """One simple command of a compound one: its words, and the files its redirections write."""

    tokens: tuple[str, ...]
    writes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parsed:
    parts: tuple[Part, ...]
    problems: tuple[str, ...]  # shell features that always need approval


def _lexer(command: str) -> list[str]:
    lx = shlex.shlex(command, posix=True, punctuation_chars=_PUNCT)
    lx.whitespace = " \t\r"
    lx.whitespace_split = True
    return list(lx)


def _is_operator(token: str) -> bool:
    return bool(token) and all(c in _PUNCT for c in token)


def split_command(command: str) -> Parsed:
    """The simple commands of ``command``; :class:`ValueError` if it cannot be parsed (bad quoting).

    Conservative by design: a quoted ``"&&"`` or newline is split like a real one (it only ever
    makes a command need approval, never run without it).
    """
    tokens = _lexer(command)
    parts: list[Part] = []
    problems: list[str] = []
    words: list[str] = []
    writes: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if "$(" in tok or "`" in tok:
            problems.append("command substitution ($(...) or backticks)")
        if _is_operator(tok):
            if tok in _SEPARATORS or set(tok) <= {";", "\n"}:
                parts.append(Part(tuple(words), tuple(writes)))
                words, writes = [], []
            elif tok in _WRITE_REDIRECTS or tok in _READ_REDIRECTS:
                if words and words[-1].isdigit():
                    words.pop()  # the file descriptor of "2>&1"
                target = tokens[i + 1] if i + 1 < len(tokens) else ""
                i += 1
                if tok in _WRITE_REDIRECTS and not (target.isdigit() or target == "-" or target in _HARMLESS_TARGETS):
                    writes.append(target)
            elif tok.startswith("<<"):
                problems.append("here-documents")
            elif tok.startswith("(") and i > 0 and tokens[i - 1] == "$":
                problems.append("command substitution ($(...) or backticks)")
            elif "(" in tok or ")" in tok:
                problems.append("subshells or grouping with ( )")
            else:
                problems.append(f"the shell operator {tok!r}")
        elif tok == "$":  # "$(" lexed apart
            pass
        else:
            words.append(tok)
        i += 1
    parts.append(Part(tuple(words), tuple(writes)))
    if "command substitution ($(...) or backticks)" in problems:  # its ")" is no subshell of its own
        problems = [p for p in problems if not p.startswith("subshells")]
    return Parsed(tuple(p for p in parts if p.tokens or p.writes), tuple(dict.fromkeys(problems)))


def _norm_words(words: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if words and _PYTHON.fullmatch(words[0].rsplit("/", 1)[-1]):
        return ("python", *words[1:])
    return tuple(words)


def normalise(command: str) -> str:
    """``command`` with single spaces between words and any Python interpreter path written ``python``."""
    try:
        parsed = split_command(command)
    except ValueError:
        return " ".join(command.split())
    return " && ".join(" ".join(_norm_words(p.tokens)) for p in parsed.parts)


def _prefix_words(prefixes: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for p in prefixes:
        try:
            words = _norm_words(shlex.split(p))
        except ValueError:
            words = _norm_words(p.split())
        if words:
            out.append(words)
    return out


def _matches(words: tuple[str, ...], prefixes: list[tuple[str, ...]]) -> bool:
    return any(words[:len(p)] == p for p in prefixes)


def _risky_flag(words: tuple[str, ...]) -> str | None:
    flags = RISKY_FLAGS.get(words[0], ()) if words else ()
    for tok in words[1:]:
        for flag in flags:
            if tok == flag or (flag.startswith("--") and tok.startswith(flag + "=")):
                return flag
            if len(flag) == 2 and tok.startswith("-") and not tok.startswith("--") and flag[1] in tok[1:]:
                return flag
    return None


@dataclass
class CommandPolicy:
    """What the agent may run without asking, who approves the rest, and the limits of a run.

    ``network=True`` skips the network namespace (to reach a server on the host's own
    127.0.0.1, which a namespace's loopback does not see); remote hosts stay refused.
    """

    allow: tuple[str, ...] = DEFAULT_ALLOW
    auto_approve: tuple[str, ...] = ()
    approve: Callable[[str], bool] | None = None
    timeout_s: float = 120.0
    max_output_chars: int = 8000
    network: bool = False

    def decide(self, command: str) -> Decision:
        """Run, ask or refuse ``command`` (nothing is run)."""
        if not command.strip():
            return Decision("refuse", "empty command")
        try:
            parsed = split_command(command)
        except ValueError as e:
            return Decision("refuse", f"the command cannot be parsed ({e}); check its quoting")
        refusal = network_refusal([list(p.tokens) for p in parsed.parts], command)
        if refusal:
            return Decision("refuse", refusal)
        allow, approved = _prefix_words(self.allow), _prefix_words(self.auto_approve)
        reasons = [f"it uses {p}" for p in parsed.problems]
        for part in parsed.parts:
            words = _norm_words(part.tokens)
            shown = " ".join(words) or "(redirection)"
            if words and _matches(words, approved):
                continue
            if not words or not _matches(words, allow):
                reasons.append(f"`{shown}` is not on the allow-list")
                continue
            flag = _risky_flag(words)
            if flag:
                reasons.append(f"`{shown}` uses {flag}, which can change files or run programs")
            if part.writes:
                reasons.append(f"`{shown}` writes to {', '.join(part.writes)} (redirection)")
        if not reasons:
            return Decision("run", "allowed")
        reason = "; ".join(dict.fromkeys(reasons))
        if self.approve is None:
            return Decision("refuse", f"needs approval ({reason}), and this run cannot ask anyone; use the "
                                      "agent's tools (read_file, search, edit, run_tests) or an allowed command, "
                                      "or have the user pass --auto-approve PREFIX")
        return Decision("ask", reason)

    def decide_tool(self, tool: str, *, trusted: bool = False) -> Decision:
        """Run, ask or refuse a call of the external tool ``tool`` (an MCP server's, ``mcp__<server>__<name>``)."""
        if trusted:
            return Decision("run", "its server is trusted")
        names = [p.strip() for p in self.auto_approve if p.strip()]
        if any(tool == p or tool.startswith(p.rstrip("_") + "__") for p in names):
            return Decision("run", "auto-approved")
        server = "__".join(tool.split("__")[:2])
        if self.approve is None:
            return Decision("refuse", f"calling {tool} needs approval (its MCP server is not trusted), and this run "
                                      f"cannot ask anyone; use the agent's other tools, or have the user pass "
                                      f"--auto-approve {tool} (or {server} for all its tools)")
        return Decision("ask", "a tool of an MCP server")

    def authorize_tool(self, tool: str, call: str, *, trusted: bool = False) -> Decision:
        """:meth:`decide_tool`, asking ``approve`` with ``call`` (the call as a person reads it) when it says ask:
        the result is ``run`` or ``refuse``."""
        decision = self.decide_tool(tool, trusted=trusted)
        if decision.action != "ask":
            return decision
        try:
            approved = bool(self.approve(call)) if self.approve else False
        except (EOFError, KeyboardInterrupt, OSError):
            approved = False
        return Decision("run", "approved") if approved else Decision("refuse", "the user declined the call")

    def run(self, command: str, cwd: Path) -> CommandResult:
        """Decide, ask if needed, and run ``command`` in ``cwd`` within the policy's limits."""
        decision = self.decide(command)
        if decision.action == "refuse":
            return CommandResult(exit_code=None, output="", refused=True, reason=decision.reason)
        if decision.action == "ask":
            try:
                approved = bool(self.approve(command)) if self.approve else False
            except (EOFError, KeyboardInterrupt, OSError):
                approved = False
            if not approved:
                return CommandResult(exit_code=None, output="", refused=True,
                                     reason=f"the user declined to run it ({decision.reason})")
        return run_shell(command, Path(cwd), timeout_s=self.timeout_s, max_output_chars=self.max_output_chars,
                         sandbox=not self.network)
