"""Safe edits: the model's reply becomes data (:class:`Edit`), checked into a :class:`Proposal`
(a diff, never written), applied atomically when accepted, and undone on request.

Two formats small models can follow (:data:`FORMATS`): ``whole`` (rewrite a target block in one
fenced code block) and ``search_replace`` (aider-style SEARCH/REPLACE blocks). :func:`propose`
finds each edit's text exactly, ignoring whitespace, or fuzzily; refuses lazy placeholders, syntax
breaks, used definitions removed, renamed or re-nested without being asked (:mod:`.structure`) and
unsafe paths; :func:`apply` and :func:`revert` write all files or none. Every refusal is
an :class:`corolla.assistant.errors.EditError` whose message a user or a model can act on.
"""

from __future__ import annotations

from corolla.assistant.edits.instructions import format_instructions
from corolla.assistant.edits.matching import DEFAULT_THRESHOLD, replace_once
from corolla.assistant.edits.placeholders import find_placeholder
from corolla.assistant.edits.proposal import apply, proposal_from_json, proposal_to_json, propose, revert, unified_diff
from corolla.assistant.edits.search_replace import parse_search_replace
from corolla.assistant.edits.structure import Allowance, structural_changes
from corolla.assistant.edits.syntax import first_error
from corolla.assistant.edits.types import FORMATS, Edit, FileChange, Proposal, Target
from corolla.assistant.edits.whole import parse_whole

__all__ = [
    "DEFAULT_THRESHOLD", "FORMATS", "Allowance", "Edit", "FileChange", "Proposal", "Target", "apply",
    "find_placeholder", "first_error", "format_instructions", "parse_reply", "parse_search_replace",
    "parse_whole", "proposal_from_json", "proposal_to_json", "propose", "replace_once", "revert",
    "structural_changes", "unified_diff",
]


def parse_reply(fmt: str, reply: str, *, target: Target | None = None, default_path: str | None = None,
                source: str | None = None) -> list[Edit]:
    """The edits in the model's ``reply`` written in format ``fmt``.

    ``target`` is what a ``whole`` reply replaces (and the default path of ``search_replace``
    blocks); ``source`` is the target file's current text, if the caller has it (else
    :func:`propose` reads it). Raises :class:`MalformedReplyError` when the reply breaks the format.
    """
    if fmt == "whole":
        return parse_whole(reply, target, default_path=default_path, source=source)
    if fmt == "search_replace":
        return parse_search_replace(reply, default_path=default_path, target=target)
    raise ValueError(f"unknown edit format {fmt!r}; choose one of {', '.join(FORMATS)}")
