"""The assistant: turns a request (chat text or a command, plus the editor's state) into a prompt with
the right context, asks the model, and turns replies that change code into edit proposals that are
shown as diffs and applied only when accepted. Every turn and edit is kept in the session store.

Every surface (CLI, service for editors, the agent later) goes through this one class.

Plain chat (no slash command) may use the tools of the workspace's MCP servers, for at most ``tool_rounds``
rounds (:mod:`corolla.assistant.chat_tools`): their servers start on the first chat turn that finds them
configured and stay up for the next turns until :meth:`Assistant.close`. Without configured servers a turn
is one streamed request, as it always was.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from corolla.assistant import commands, git
from corolla.assistant.chat_tools import ChatTools
from corolla.assistant.commands import Command
from corolla.assistant.context import Context, EditorState, build_context
from corolla.assistant.context.diffview import render_changes
from corolla.assistant.context.enclosing import scope_note
from corolla.assistant.edits import (
    Allowance,
    Proposal,
    Target,
    apply,
    format_instructions,
    parse_reply,
    proposal_from_json,
    proposal_to_json,
    propose,
    revert,
)
from corolla.assistant.edits.types import DEFAULT_FORMAT, EditFormat
from corolla.assistant.errors import (
    AssistantError,
    CheckFailedError,
    EditError,
    NoChangeError,
    StaleFileError,
    UnsafePathError,
)
from corolla.assistant.llm import LLM
from corolla.assistant.sessions import SessionStore
from corolla.assistant.tokens import TokenCounter, token_counter
from corolla.assistant.workspace import normalize, read_text

if TYPE_CHECKING:
    from corolla.assistant.agent.policy import CommandPolicy
    from corolla.assistant.agent.tools import Tool
    from corolla.assistant.mcp.hub import MCPHub

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AssistantConfig:
    context_tokens: int = 2000  # budget for the context the engine gathers (instructions, files, repo map)
    history_tokens: int = 1500  # earlier turns of the session sent along
    edit_format: EditFormat = DEFAULT_FORMAT
    edit_retries: int = 1  # a reply that cannot be applied is sent back once with the reason
    review_style: str = commands.DEFAULT_REVIEW_STYLE  # how /review asks: see commands.REVIEW_TASKS
    mcp: bool = True  # plain chat offers the tools of the workspace's MCP servers
    tool_rounds: int = 4  # chat's model replies with tool calls per turn; then it answers without tools


@dataclasses.dataclass(frozen=True)
class EditOutcome:
    edit_id: str
    session_id: str
    proposal: Proposal
    reply: str

    def to_json(self) -> dict:
        return {"edit_id": self.edit_id, "session_id": self.session_id, "diff": self.proposal.diff,
                "files": [c.path for c in self.proposal.changes], "notes": list(self.proposal.notes),
                "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in self.proposal.changes]}


class Assistant:
    def __init__(self, llm: LLM, root: Path, store: SessionStore | None = None,
                 config: AssistantConfig | None = None, counter: TokenCounter | None = None,
                 find_tokenizer: Callable[[str], Path | None] | None = None,
                 tool_policy: CommandPolicy | None = None, mcp: MCPHub | None = None):
        """``counter`` counts tokens for the budgets; without one, ``find_tokenizer`` (the model's name
        -> its ``tokenizer.json``, or None) gives the model's own tokenizer, else they are estimated.

        ``tool_policy``: which MCP tools chat may call (default: those of trusted servers only, nobody to ask).
        ``mcp``: the caller's MCP servers (it closes them); None: the workspace's, started by the first chat
        turn that finds them configured and stopped by :meth:`close`."""
        self.llm = llm
        self.root = Path(root).resolve()
        self.store = store or SessionStore(self.root)
        self.config = config or AssistantConfig()
        self._counter = counter
        self._find_tokenizer = find_tokenizer
        self.tool_policy = tool_policy
        self._chat_tools = ChatTools(self.llm, self.root, self.store, mcp)

    def __enter__(self) -> Assistant:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the MCP servers chat started (idempotent; a later chat turn starts them again)."""
        self._chat_tools.close()

    @property
    def count_tokens(self) -> TokenCounter:
        if self._counter is None:
            file = self._find_tokenizer(self.llm.model) if self._find_tokenizer is not None else None
            self._counter = token_counter(file)
        return self._counter

    # --- context -------------------------------------------------------------------------------
    def state(self, **kw) -> EditorState:
        return EditorState(root=self.root, **kw)

    def context(self, state: EditorState, query: str = "", **kw) -> Context:
        return build_context(state, query, budget_tokens=self.config.context_tokens, count_tokens=self.count_tokens,
                             **kw)

    def _session(self, session_id: str | None, kind: str = "chat") -> str:
        return session_id if session_id else self.store.create(kind=kind).id

    def _history(self, session_id: str) -> list[dict]:
        """The session's earlier turns, newest kept first, within the history budget."""
        kept, used = [], 0
        for message in reversed(self.store.messages(session_id)):
            if message.role not in ("user", "assistant"):
                continue
            cost = self.count_tokens(message.content)
            if used + cost > self.config.history_tokens:
                break
            kept.append({"role": message.role, "content": message.content})
            used += cost
        return kept[::-1]

    # --- one turn of chat or a command, streamed as events ---------------------------------------
    def respond(self, text: str, state: EditorState, session_id: str | None = None, *,
                allow_structure: bool = False) -> Iterator[dict]:
        """Events: session, context, delta (text pieces), edit / edit_error for commands that change code,
        done. A command that cannot run (no file, not a git repo) raises before anything is stored.

        Plain chat with MCP servers configured may also give ``warning`` (a server that cannot be used, an
        endpoint without tools: chat goes on without them), then per tool call the model makes ``tool_call``
        {id, name, arguments, call} before it runs and ``tool_result`` {id, name, ok, output, refused} after
        (``output`` is what the model gets, cut like a command's); the answer's text comes as ``delta`` events.

        ``allow_structure``: let the edit remove, rename or re-nest definitions other code uses (without
        it, only those the request's text asks to change; see :mod:`corolla.assistant.edits.structure`)."""
        command, rest = commands.parse_command(text)
        session_id = self._session(session_id)
        history = self._history(session_id)
        messages, context, target = self._prompt(command, rest, state)
        yield {"type": "session", "id": session_id}
        yield {"type": "context", **_context_json(context)}
        self.store.add_message(session_id, "user", text, context=context.to_json() if context else None)
        messages = messages[:1] + history + messages[1:]
        tools: dict[str, Tool] = {}
        if command is None and self.config.mcp:
            tools, warnings = self._chat_tools.tools()
            for warning in warnings:
                self.store.add_event(session_id, "warning", {"message": warning})
                yield {"type": "warning", "message": warning}
        pieces: list[str] = []
        try:
            if tools:
                yield from self._chat_tools.turn(messages, tools, pieces, session_id, policy=self.tool_policy,
                                                 rounds=self.config.tool_rounds)
            else:
                yield from self._stream(messages, pieces)
        finally:  # a stopped stream keeps what was said so far
            reply = "".join(pieces)
            message = self.store.add_message(session_id, "assistant", reply)
        if command is not None and command.edits and target is not None:
            try:
                allow = Allowance.from_request(rest, everything=allow_structure)
                outcome = self._store_edit(session_id, self._parse(reply, target, state, allow), reply, command.name)
                yield {"type": "edit", **outcome.to_json()}
            except EditError as e:
                yield {"type": "edit_error", "error": {"type": e.code, "message": str(e)}}
        if command is not None and command.name == "commit":
            yield {"type": "commit_message", "text": commands.commit_message_from_reply(reply)}
        yield {"type": "done", "message_id": message.id, "session_id": session_id}

    def _stream(self, messages: list[dict], pieces: list[str], **overrides) -> Iterator[dict]:
        for piece in self.llm.stream(messages, **overrides):
            pieces.append(piece)
            yield {"type": "delta", "text": piece}

    def _prompt(self, command: Command | None, rest: str, state: EditorState,
                ) -> tuple[list[dict], Context | None, Target | None]:
        if command is None:
            context = self.context(state, rest)
            user = _join(context.render(), rest)
            return [_system(commands.system_prompt(context.instructions())), _user(user)], context, None
        if command.name in ("review", "commit"):
            return self._git_prompt(command, rest, state)
        target = self._target(state, command)
        context = self.context(state, rest)
        code = self._target_text(target, state)
        diagnostics = "\n".join(state.diagnostics)
        present = {"instructions"} if context.instructions() else set()
        task, extra, edit_format = command.prompt(present), "", ""
        if command.name == "tests":  # the reply is a new test file, written whole
            task = command.prompt(present, framework=commands.detect_test_framework(self.root, state.current_file))
            tests_at = commands.test_path(self.root, state.current_file)
            extra = f"The test file will be saved as {tests_at}; import the code under test from its module."
            edit_format = format_instructions("whole", Target(tests_at))
        elif command.edits:
            edit_format = format_instructions(self.config.edit_format, target)
        reported = bool(diagnostics) and command.name == "fix"
        user = _join(_without_target(context, state.current_file, diagnostics_apart=reported),
                     self._scope_note(target, state), commands.fence(target.path, code, target.start_line),
                     f"Problems reported:\n{diagnostics}" if reported else "",
                     task, rest, extra)
        if command.name == "tests":
            target = Target(tests_at)
        system = commands.system_prompt(context.instructions(), edit_format=edit_format)
        return [_system(system), _user(user)], context, target

    def _git_prompt(self, command: Command, rest: str, state: EditorState):
        context = self.context(dataclasses.replace(state, current_file=None, selection=None), rest,
                               include_tree=False, include_repo_map=False)
        present = {"instructions"} if context.instructions() else set()
        if command.name == "commit":
            what, diff = git.diff(self.root, "staged")
            if not diff.strip():
                raise AssistantError("nothing is staged: `git add` the changes to describe first")
            subjects = git.recent_subjects(self.root)
            style = ("Recent commit subjects:\n" + "\n".join(f"- {s}" for s in subjects)) if subjects else ""
            present |= {"subjects"} if subjects else set()
            user = _join(style, "Staged diff:\n```diff\n" + git.clip_diff(diff) + "\n```", rest)
        else:  # each change inside its whole function, numbered, to cite as FILE:LINE (context.diffview)
            scope, base, rest = _review_scope(rest)
            what, diff, side = git.changes(self.root, scope, base)
            if not diff.strip():
                raise AssistantError(f"there is nothing to review: no {what}")
            shown = render_changes(diff, lambda path: git.new_text(self.root, side, path), git.MAX_DIFF_CHARS)
            user = _join(f"The {what}:", shown, rest)
            task = commands.REVIEW_TASKS.get(self.config.review_style)
            if task is None:
                raise AssistantError(f"unknown review style {self.config.review_style!r}: use one of "
                                     f"{', '.join(commands.REVIEW_TASKS)}")
            command = dataclasses.replace(command, task=task)
        user = _join(user, command.prompt(present))
        return [_system(commands.system_prompt(context.instructions())), _user(user)], context, None

    def _scope_note(self, target: Target, state: EditorState) -> str:
        """What the target lines are inside of (the ``def`` line of a selected body...), or ""."""
        if target.start_line is None:
            return ""
        return scope_note(self._read(target.path, state), target.path, target.start_line, target.end_line)

    def _target(self, state: EditorState, command: Command | None = None) -> Target:
        if not state.current_file:
            name = f"/{command.name}" if command else "an edit"
            raise AssistantError(f"{name} needs a file: open one in the editor or pass --file")
        if state.selection:
            return Target(state.current_file, state.selection[0], state.selection[1])
        return Target(state.current_file)

    def _target_text(self, target: Target, state: EditorState) -> str:
        text = self._read(target.path, state)
        if target.start_line is None:
            return text
        lines = text.splitlines(keepends=True)
        if not 1 <= target.start_line <= target.end_line <= max(len(lines), 1):
            raise AssistantError(f"lines {target.start_line}-{target.end_line} are outside {target.path} "
                                 f"({len(lines)} lines)")
        return "".join(lines[target.start_line - 1:target.end_line])

    def _read(self, path: str, state: EditorState) -> str:
        if path in state.buffers:
            return state.buffers[path]
        rel, why = normalize(self.root, path)  # an editor may send the absolute path
        if rel is None:
            raise UnsafePathError(why)
        text = read_text(self.root, rel, state.buffers)
        if text is None:
            raise AssistantError(f"no file {path} in the workspace {self.root}")
        return text

    # --- edits ---------------------------------------------------------------------------------
    def _parse(self, reply: str, target: Target, state: EditorState, allow: Allowance) -> Proposal:
        fmt = "whole" if target.path != state.current_file else self.config.edit_format
        source = None
        if fmt == "whole" and target.path == state.current_file:
            source = self._read(target.path, state)
        edits = parse_reply(fmt, reply, target=target, default_path=target.path, source=source)
        if fmt == "whole" and target.path != state.current_file and (self.root / target.path).exists():
            # new tests for a file that already has some: add them after the existing ones
            existing = self._read(target.path, state)
            edits = [dataclasses.replace(e, old=existing, new=existing.rstrip("\n") + "\n\n\n" + e.new.lstrip("\n"))
                     for e in edits]
        return _checked(propose(self.root, edits, buffers=state.buffers, allow=allow))

    def _store_edit(self, session_id: str, proposal: Proposal, reply: str, command: str) -> EditOutcome:
        edit_id = self.store.add_edit(session_id, {"proposal": proposal_to_json(proposal), "command": command})
        return EditOutcome(edit_id, session_id, proposal, reply)

    def propose_edit(self, instruction: str, state: EditorState, session_id: str | None = None,
                     fmt: str | None = None, *, allow_structure: bool = False,
                     verify: Callable[[Proposal], None] | None = None) -> EditOutcome:
        """Ask for a change of the selection (or the current file) and return it as a proposal, not applied.

        A reply that cannot be applied is sent back with the reason (``edit_retries`` times); after that
        the last :class:`EditError` is raised and nothing is proposed. ``allow_structure`` as for
        :meth:`respond`; ``verify`` as for :meth:`fix`."""
        fmt = fmt or self.config.edit_format
        target = self._target(state)
        context = self.context(state, instruction)
        code = self._target_text(target, state)
        system = commands.system_prompt(context.instructions(), edit_format=format_instructions(fmt, target))
        user = _join(_without_target(context, state.current_file), self._scope_note(target, state),
                     commands.fence(target.path, code, target.start_line), f"Change this code as asked: {instruction}")
        session_id = self._session(session_id, kind="edit")
        self.store.add_message(session_id, "user", instruction, context=context.to_json(),
                               meta={"file": target.path, "lines": [target.start_line, target.end_line], "format": fmt})
        allow = Allowance.from_request(instruction, everything=allow_structure)
        return self._attempts([_system(system), _user(user)], code, target, fmt, state, session_id, "edit", allow,
                              verify)

    def fix(self, request: str, state: EditorState, session_id: str | None = None, *, allow_structure: bool = False,
            verify: Callable[[Proposal], None] | None = None) -> EditOutcome:
        """``/fix`` of the selection as a proposal (not applied), the problems in ``state.diagnostics``.

        Unlike :meth:`respond` it is not streamed and a reply is retried like :meth:`propose_edit`'s.
        ``verify`` (e.g. a reproduction command run with the edit applied, see
        :mod:`corolla.assistant.check`) raises an :class:`EditError` when the proposal does not do; it
        goes back to the model like any refusal, and is raised after the last attempt."""
        command = commands.COMMANDS["fix"]
        messages, context, target = self._prompt(command, request, state)
        assert target is not None  # /fix always has one (or _prompt raised)
        session_id = self._session(session_id, kind="edit")
        self.store.add_message(session_id, "user", f"/fix {request}".rstrip(),
                               context=context.to_json() if context else None,
                               meta={"file": target.path, "lines": [target.start_line, target.end_line],
                                     "diagnostics": list(state.diagnostics)})
        allow = Allowance.from_request(request, everything=allow_structure)
        fmt = self.config.edit_format
        return self._attempts(messages, self._target_text(target, state), target, fmt, state, session_id, "fix",
                              allow, verify)

    def _attempts(self, messages: list[dict], code: str, target: Target, fmt: str, state: EditorState,
                  session_id: str, command: str, allow: Allowance,
                  verify: Callable[[Proposal], None] | None) -> EditOutcome:
        """Ask, parse, check and ``verify`` up to ``edit_retries + 1`` times: the stored proposal, or the last error."""
        # a reply is about as long as the code it rewrites: a model that starts repeating itself is cut
        # off after twice that instead of running to the endpoint's limit (minutes on a CPU swarm)
        limit = min(self.llm.config.max_tokens, 2 * self.count_tokens(code) + 256)
        for attempt in range(self.config.edit_retries + 1):
            reply = self.llm.complete(messages, max_tokens=limit).content
            self.store.add_message(session_id, "assistant", reply)
            try:
                edits = parse_reply(fmt, reply, target=target, default_path=target.path,
                                    source=self._read(target.path, state) if fmt == "whole" else None)
                proposal = _checked(propose(self.root, edits, buffers=state.buffers, allow=allow))
                if verify is not None:
                    verify(proposal)
                return self._store_edit(session_id, proposal, reply, command)
            except EditError as e:
                logger.debug("edit attempt %d refused: %s", attempt + 1, e)
                if attempt == self.config.edit_retries:
                    self.store.add_message(session_id, "system", f"edit refused: {e}")
                    raise
                messages = [*messages, {"role": "assistant", "content": reply}, _user(_retry_request(e))]
        raise AssertionError("unreachable")

    def edit(self, edit_id: str) -> tuple[dict, Proposal]:
        record = self.store.get_edit(edit_id)
        return record, proposal_from_json(record.proposal["proposal"])

    def accept(self, edit_id: str, applied_by_editor: bool = False) -> Proposal:
        """Apply a proposed edit atomically (all files or none).

        ``applied_by_editor``: an editor already applied it (so that its own undo works) and saved the
        files; the edit is recorded as accepted once every file on disk equals the proposal's result."""
        record, proposal = self.edit(edit_id)
        if record.status != "proposed":
            raise AssistantError(f"edit {edit_id} is {record.status}; only a proposed edit can be accepted")
        if applied_by_editor:
            for change in proposal.changes:
                file = self.root / change.path
                if not file.is_file() or file.read_text() != change.after:
                    raise StaleFileError(f"{change.path} on disk is not the edit's result: save the file after "
                                         f"applying the edit, then accept it")
        else:
            apply(self.root, proposal)
        self.store.set_edit_status(edit_id, "accepted")
        return proposal

    def reject(self, edit_id: str) -> None:
        record, _ = self.edit(edit_id)
        if record.status != "proposed":
            raise AssistantError(f"edit {edit_id} is {record.status}; only a proposed edit can be rejected")
        self.store.set_edit_status(edit_id, "rejected")

    def undo(self, session_id: str | None = None) -> tuple[str, Proposal]:
        """Revert the last accepted edit (of the session, or of the workspace)."""
        record = self.store.last_accepted_edit(session_id)
        if record is None:
            raise AssistantError("there is no accepted edit to undo")
        proposal = proposal_from_json(record.proposal["proposal"])
        revert(self.root, proposal)
        self.store.set_edit_status(record.id, "undone")
        return record.id, proposal


def _retry_request(error: EditError) -> str:
    """What to tell the model after its reply was refused (or did not pass the check)."""
    if isinstance(error, CheckFailedError):
        return (f"With your edit applied, `{error.command}` still fails (exit {error.exit_code}):\n```\n"
                f"{error.output.strip()}\n```\nThe file was left as it was. Reply again with the corrected code, "
                "following the format exactly and writing out all the code, with no placeholders.")
    return (f"Your reply could not be applied: {error}\nReply again, following the format exactly and "
            "writing out all the code, with no placeholders.")


def _checked(proposal: Proposal) -> Proposal:
    if not proposal.changes:
        raise NoChangeError("the reply leaves the code exactly as it was: nothing to apply")
    return proposal


def _review_scope(text: str) -> tuple[str, str | None, str]:
    """(scope, base branch, the rest of the request) of ``/review [staged|unstaged|all|branch [BASE]] ...``."""
    words = text.split()
    for scope in ("staged", "unstaged", "all"):
        if scope in words:
            words.remove(scope)
            return scope, None, " ".join(words)
    if "branch" in words:
        at = words.index("branch")
        following = words[at + 1:]
        return "branch", following[0] if following else None, " ".join(words[:at] + following[1:])
    return "auto", None, text


def _without_target(context: Context, path: str | None, diagnostics_apart: bool = False) -> str:
    """The context rendered without the parts that repeat the code being changed (it is shown apart),
    and without the diagnostics when they are shown apart too (``/fix``'s "Problems reported")."""
    parts = [p for p in context.parts
             if not (p.kind in ("selection", "current_file") and p.label.split(":")[0] == path)
             and not (diagnostics_apart and p.kind == "diagnostics")]
    return dataclasses.replace(context, parts=parts).render()


def _context_json(context: Context | None) -> dict:
    if context is None:
        return {"parts": [], "used_tokens": 0, "budget_tokens": 0, "dropped": []}
    return {"parts": context.to_json(), "used_tokens": context.used_tokens, "budget_tokens": context.budget_tokens,
            "dropped": list(context.dropped)}


def _system(text: str) -> dict:
    return {"role": "system", "content": text}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _join(*parts: str) -> str:
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip())
