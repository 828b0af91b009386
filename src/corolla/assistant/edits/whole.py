"""The ``whole`` format: the model rewrites a target block (a line range or the whole file) in full.

The simplest format for a small model: it gets the block and replies with its new version in one
fenced code block. Parsing picks the fenced block that best resembles the target (a reply may show
several), accepts an unfenced reply only when it has no prose and shares lines with the target,
keeps the target's base indentation when the model shifted the whole block (dedented it, or indented
it deeper: a top-level function sent back four spaces in would otherwise become nested inside the
function above it), and keeps the block's trailing newlines as they were.
"""

from __future__ import annotations

import re
from collections import Counter

from corolla.assistant.edits.matching import base_indent, reindent
from corolla.assistant.edits.types import Edit, Target
from corolla.assistant.errors import MalformedReplyError, NoMatchError
from corolla.assistant.fences import Block, fenced_blocks

_CODE_PUNCTUATION = re.compile(r"[(){}\[\]=;:<>]")
_PROSE = re.compile(r"^[A-Z][A-Za-z']*(?:,?\s+[\w'(),/-]+){2,}[.:!?]$")


def extract_code(reply: str, like: str = "") -> list[str]:
    """The lines of code the model wrote: the fenced block most like ``like``, or a bare-code reply."""
    blocks = fenced_blocks(reply)
    if blocks:
        want = Counter(x.strip() for x in like.splitlines() if x.strip())

        def score(block: Block) -> tuple[int, int]:
            have = Counter(x.strip() for x in block.body if x.strip())
            return sum((have & want).values()), len(block.body)

        return max(blocks, key=score).body  # max keeps the first of equals: deterministic
    lines = reply.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    if not reply.strip():
        raise MalformedReplyError("the reply is empty; reply with the new code in a fenced code block")
    known = {x.strip() for x in like.splitlines() if len(x.strip()) > 3}
    prose = [x for x in lines if _PROSE.match(x.strip()) and x.strip() not in known]
    if known:
        looks_like_code = any(x.strip() in known for x in lines)
    else:  # nothing to compare with: at least some code punctuation ("Sure" or "Done" is no code)
        looks_like_code = any(_CODE_PUNCTUATION.search(x) for x in lines)
    if prose or not looks_like_code:
        raise MalformedReplyError(
            "the reply has no fenced code block; reply with the new code in one block that starts "
            "with ``` and ends with ```")
    return lines


def target_text(source: str, target: Target) -> str:
    """The exact current text of ``target`` in ``source`` (the whole of it for a whole-file target)."""
    if target.start_line is None:
        return source
    lines = source.splitlines(keepends=True)
    start, end = target.start_line, target.end_line or target.start_line
    if not 1 <= start <= end or start > len(lines):
        raise NoMatchError(f"{target.path}: lines {start}-{end} are not in the file ({len(lines)} lines)")
    return "".join(lines[start - 1:min(end, len(lines))])


def resolve_whole(code: list[str], target: Target, source: str | None) -> Edit:
    """The edit replacing ``target`` in ``source`` (None: the file does not exist) by ``code``."""
    if source is None:
        if target.start_line is not None:
            raise NoMatchError(f"{target.path}: the file does not exist, so it has no lines "
                               f"{target.start_line}-{target.end_line}")
        old = ""
    else:
        old = target_text(source, target)
        if target.start_line is not None and _rewrote_whole_file(code, source, target):
            target = Target(target.path)  # the model sent the whole file back: take it as such
            old = source
    old_lines = old.replace("\r\n", "\n").splitlines()
    code = list(code)
    while code and not code[-1].strip():
        code.pop()
    if old_lines and old_lines[0].strip():
        while code and not code[0].strip():
            code.pop(0)
    if target.start_line is not None:
        code = _keep_base_indent(code, old_lines)
    new = "\n".join(code)
    if code and (not old or old.endswith("\n")):
        blank_tail = 0  # blank lines that ended the target (a range followed by a spacer line)
        if any(x.strip() for x in old_lines):
            while not old_lines[-1 - blank_tail].strip():
                blank_tail += 1
        new += "\n" * (1 + blank_tail)
    return Edit(path=target.path, old=old, new=new, line=target.start_line)


def _keep_base_indent(code: list[str], old_lines: list[str]) -> list[str]:
    """``code`` moved back to the target's indentation when the model shifted the whole block.

    Shallower than the target's base is always a shift (a block cannot sit left of where it goes):
    indented back. Deeper is moved left by as much as its first line moved, never past the target's
    base: a range that starts inside a body (first line at 8 spaces, later ones at 4) may come back
    with only its deeper lines, and then the first lines agree and nothing moves.
    """
    src, dst = base_indent(code), base_indent(old_lines)
    if src == dst:
        return code
    if dst.startswith(src):
        return reindent(code, src, dst)
    if not src.startswith(dst):  # another kind of whitespace (tabs for spaces): not ours to guess
        return code
    shift = min(len(src) - len(dst), len(_first_indent(code)) - len(_first_indent(old_lines)))
    return reindent(code, src, src[:len(src) - shift]) if shift > 0 else code


def _first_indent(lines: list[str]) -> str:
    first = next((x for x in lines if x.strip()), "")
    return first[:len(first) - len(first.lstrip())]


def _rewrote_whole_file(code: list[str], source: str, target: Target) -> bool:
    """Whether ``code`` for a line range is the whole file (small models often send it all back).

    True when the code holds (nearly) all the lines outside the range, at least three of them.
    """
    lines = source.splitlines()
    start, end = target.start_line or 1, target.end_line or target.start_line or 1
    outside = Counter(x.strip() for x in lines[:start - 1] + lines[end:] if x.strip())
    if sum(outside.values()) < 3:
        return False
    have = Counter(x.strip() for x in code if x.strip())
    return sum((have & outside).values()) >= 0.9 * sum(outside.values())


def parse_whole(reply: str, target: Target | None, *, default_path: str | None = None,
                source: str | None = None) -> list[Edit]:
    """One edit replacing ``target`` by the code of ``reply``.

    With ``source`` (the file's current text) the edit is resolved now, choosing among several
    blocks the one sharing most lines with the target. Without it the longest block is taken; the
    edit keeps ``target`` and the code as ``new``, and
    :func:`corolla.assistant.edits.proposal.propose` resolves it against the file it reads.
    """
    if target is None:
        if default_path is None:
            raise MalformedReplyError("the whole format needs a target (a file or a line range)")
        target = Target(default_path)
    if source is not None:
        return [resolve_whole(extract_code(reply, target_text(source, target)), target, source)]
    code = extract_code(reply)
    return [Edit(path=target.path, old="", new="\n".join(code) + "\n", line=target.start_line, target=target)]
