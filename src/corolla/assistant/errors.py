"""The assistant's errors: each says what went wrong in words a user (or a model, in agent mode) can act on."""

from __future__ import annotations

from corolla.errors import CorollaError


class AssistantError(CorollaError):
    """Base of the assistant's errors."""


class EndpointError(AssistantError):
    """The model endpoint cannot be reached or answered with an error."""

    retryable = True


class UnknownCommandError(AssistantError):
    """A slash command the assistant does not know."""


class GitError(AssistantError):
    """A git command the assistant needs failed (not a repository, nothing staged, ...)."""


class SessionNotFoundError(AssistantError):
    """No session with this id in the workspace's session store (deleted, or another workspace's)."""


class EditNotFoundError(AssistantError):
    """No proposed edit with this id in the workspace's session store."""


class SessionStoreError(AssistantError):
    """The session database cannot be used (written by a newer corolla, or not a database)."""


# --- edits (corolla.assistant.edits) ------------------------------------------------------------
class EditError(AssistantError):
    """An edit could not be parsed, matched, checked or written; no file was changed."""


class MalformedReplyError(EditError):
    """The model's reply does not follow the edit format (no block, unterminated block, ...)."""


class NoMatchError(EditError):
    """The text an edit replaces is not in the file; the message shows the closest lines."""


class AmbiguousMatchError(EditError):
    """The text an edit replaces occurs in several places equally well."""


class PlaceholderError(EditError):
    """The new text has a lazy placeholder ("... existing code ...") instead of real lines."""


class SyntaxBreakError(EditError):
    """The edit would turn a file that parsed into one that does not."""


class StructureBreakError(EditError):
    """The edit would remove, rename or re-nest a definition other code uses (``changes`` says which and how)."""

    def __init__(self, message: str, changes: tuple | list = ()):
        super().__init__(message)
        self.changes = tuple(changes)  # corolla.assistant.edits.structure.StructureChange


class CheckFailedError(EditError):
    """The check command (``corolla fix --check``) still fails with the edit applied; the file was restored."""

    def __init__(self, message: str, command: str = "", exit_code: int | None = None, output: str = ""):
        super().__init__(message)
        self.command, self.exit_code, self.output = command, exit_code, output


class StaleFileError(EditError):
    """A file changed since the proposal was made (or since it was applied, for an undo)."""


class UnsafePathError(EditError):
    """A path is absolute, escapes the workspace root, or points into .git/."""


class NoChangeError(EditError):
    """The model's reply, applied, would change nothing."""


# --- background agents (corolla.assistant.agent.background) -----------------------------------
class AgentError(AssistantError):
    """A background agent cannot do what was asked."""


class AgentNotFoundError(AgentError, SessionNotFoundError):
    """No agent with this id in the workspace (an id of a chat session, or a deleted one)."""


class AgentStateError(AgentError):
    """The agent is not in a state that allows this (apply while it runs, stop after it finished, ...)."""


class ApplyConflictError(AgentError):
    """The agent's diff does not apply to the user's working tree; the tree was left untouched."""
