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

from typing import TYPE_CHECKING

from corolla.assistant.lazy import lazy_getattr

if TYPE_CHECKING:
    from corolla.assistant.edits.types import Edit, Target

# public name -> the module that defines it; imported on first use, so that a light module of this
# package (the CLI reads the formats of :mod:`.types` to build its flags) does not load the others
_WHERE = {
    "format_instructions": "instructions", "DEFAULT_THRESHOLD": "matching", "replace_once": "matching",
    "find_placeholder": "placeholders", "apply": "proposal", "proposal_from_json": "proposal",
    "proposal_to_json": "proposal", "propose": "proposal", "revert": "proposal", "unified_diff": "proposal",
    "parse_search_replace": "search_replace", "Allowance": "structure", "structural_changes": "structure",
    "first_error": "syntax", "DEFAULT_FORMAT": "types", "FORMATS": "types", "EditFormat": "types", "Edit": "types",
    "FileChange": "types", "Proposal": "types", "Target": "types", "parse_whole": "whole",
}

__all__ = sorted([*_WHERE, "parse_reply"])


__getattr__ = lazy_getattr(__name__, _WHERE)


def parse_reply(fmt: str, reply: str, *, target: Target | None = None, default_path: str | None = None,
                source: str | None = None) -> list[Edit]:
    """The edits in the model's ``reply`` written in format ``fmt``.

    ``target`` is what a ``whole`` reply replaces (and the default path of ``search_replace``
    blocks); ``source`` is the target file's current text, if the caller has it (else
    :func:`propose` reads it). Raises :class:`MalformedReplyError` when the reply breaks the format.
    """
    from corolla.assistant.edits.search_replace import parse_search_replace
    from corolla.assistant.edits.types import FORMATS
    from corolla.assistant.edits.whole import parse_whole

    if fmt == "whole":
        return parse_whole(reply, target, default_path=default_path, source=source)
    if fmt == "search_replace":
        return parse_search_replace(reply, default_path=default_path, target=target)
    raise ValueError(f"unknown edit format {fmt!r}; choose one of {', '.join(FORMATS)}")
