"""``corolla fix --check CMD``: a fix is kept only when the reproduction command passes with it.

The command runs before any edit; it should fail (that is the bug). If it already passes it cannot
tell a working fix from a broken one, so nothing is asked of the model. Its failure is shown to the
model with the error. Each proposed fix is then written (atomically), the command runs again, and
the file is put back byte for byte whatever happened (:func:`verifier`): a fix that does not make the
command pass raises :class:`CheckFailedError`, which the assistant sends back to the model once
(``edit_retries``); after that the edit is refused with the failing output. A fix that passes is
returned as a proposal, applied like any other when accepted (so it can be undone).

The command is the user's own (typed on the command line, like ``make test``): it runs through
``bash -c`` in the workspace, in its own process group, killed after ``timeout_s``; it is not put
through the agent's command policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from corolla.assistant.agent.shell import CommandResult, run_shell
from corolla.assistant.context import EditorState
from corolla.assistant.core import Assistant, EditOutcome
from corolla.assistant.edits import FileChange, Proposal, apply, revert
from corolla.assistant.errors import CheckFailedError, StaleFileError
from corolla.assistant.workspace import read_text


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    command: str
    timeout_s: float = 120.0
    max_output_chars: int = 4000  # what the model and the user see of the output: its head and tail


@dataclasses.dataclass(frozen=True)
class CheckedFix:
    """``before``: the command's run before any edit; ``outcome``: the fix that made it pass (not applied),
    None when it already passed before (nothing was asked of the model)."""

    before: CommandResult
    outcome: EditOutcome | None


def run_check(root: Path, config: CheckConfig) -> CommandResult:
    return run_shell(config.command, Path(root), timeout_s=config.timeout_s,
                     max_output_chars=config.max_output_chars, sandbox=False)


def passed(result: CommandResult) -> bool:
    return result.exit_code == 0 and not result.timed_out


def describe(result: CommandResult) -> str:
    return "timed out" if result.timed_out else f"exit {result.exit_code}"


def verifier(root: Path, config: CheckConfig,
             on_result: Callable[[CommandResult], None] | None = None) -> Callable[[Proposal], None]:
    """A ``verify`` for :meth:`Assistant.fix`: write the proposal, run the command, put the files back."""

    def verify(proposal: Proposal) -> None:
        apply(root, proposal)
        try:
            result = run_check(root, config)
        finally:  # also on Ctrl-C: the user's file is never left holding an unchecked edit
            restore(root, proposal)
        if on_result is not None:
            on_result(result)
        if not passed(result):
            raise CheckFailedError(
                f"`{config.command}` still fails with the edit applied ({describe(result)}), so the edit was "
                f"refused and the file left as it was:\n{result.output.rstrip()}",
                command=config.command, exit_code=result.exit_code, output=result.output)

    return verify


def restore(root: Path, proposal: Proposal) -> None:
    """Put every file of an applied ``proposal`` back as it was, byte for byte.

    Atomic like any apply; also when the check command itself rewrote a file (a formatter, a
    generated file), which makes a plain :func:`revert` refuse as stale.
    """
    try:
        revert(root, proposal)
    except StaleFileError:
        now = {c.path: read_text(root, c.path) for c in proposal.changes}
        # from what is there now (None: it must not exist) back to what was there before
        back = tuple(FileChange(c.path, c.before, now[c.path]) for c in proposal.changes if now[c.path] != c.before)
        revert(root, Proposal(back, ""))


def checked_fix(assistant: Assistant, request: str, state: EditorState, config: CheckConfig,
                session_id: str | None = None, *,
                allow_structure: bool = False,
                on_result: Callable[[str, CommandResult], None] | None = None) -> CheckedFix:
    """Run the check, ask for a fix that makes it pass (see the module's docstring); raises the last refusal.

    ``on_result(when, result)`` hears of each run of the command: when is "before" or "after".
    """
    root = assistant.root
    before = run_check(root, config)
    if on_result is not None:
        on_result("before", before)
    if passed(before):
        return CheckedFix(before, None)
    failure = f"`{config.command}` fails ({describe(before)}):\n{before.output.rstrip()}"
    state = dataclasses.replace(state, diagnostics=(*state.diagnostics, failure))
    verify = verifier(root, config, None if on_result is None else (lambda r: on_result("after", r)))
    outcome = assistant.fix(request, state, session_id, allow_structure=allow_structure, verify=verify)
    return CheckedFix(before, outcome)
