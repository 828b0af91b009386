"""Catch lazy placeholders: a model writing "# ... existing code ..." instead of the real lines.

Applied as written such an edit deletes the code the placeholder stands for, so it is refused.
A line counts only when it is *new*: the same line (ignoring surrounding whitespace) in the old
text means the file already had it. Real code is left alone: ``...`` as a Python body after a
``:`` (``def f(): ...`` stubs, protocols), ``x[..., 0]``, ``Ellipsis``, JS spreads ``...args``,
and ordinary comments that merely mention "the rest of the file".
"""

from __future__ import annotations

import re

from corolla.assistant.errors import PlaceholderError

_ELLIPSIS = r"(?:\.\.\.+|…)"
_COMMENT = re.compile(r"^(?:#+|//+|/\*+|\*+|<!--|--|\{-)\s*(?P<text>.*?)\s*(?:\*/|-->|-\})?$")
# a line that is nothing but an ellipsis, maybe commented or bracketed: "...", "# ...", "// …", "[...]"
_BARE = re.compile(rf"^(?:#+|//+|/\*+|<!--|--)?\s*[\[(<{{]?\s*{_ELLIPSIS}\s*[\])>}}]?\s*(?:\*/|-->)?$")
# "<existing code>", "<rest of the file>", "[... code omitted ...]"
_ANGLE = re.compile(r"^[<\[]\s*(?:\.\.\.|…)?\s*(?:existing|rest|remaining|unchanged|previous|other)\b[^>\]]*[>\]]$",
                    re.IGNORECASE)
_PHRASES = re.compile(
    r"\b(?:existing\s+(?:code|implementation|logic|methods?|functions?|imports?|content|lines?)"
    r"|rest\s+of\s+(?:the\s+|this\s+|your\s+)?(?:code|file|function|method|class|module|implementation|body|"
    r"lines?|script|program|component|imports?|tests?)"
    r"|remaining\s+(?:code|lines|methods|functions|implementation|content)"
    r"|(?:previous|original|other|same)\s+(?:code|methods|functions|implementation|content)"
    r"|(?:code|lines?|implementation|everything(?:\s+else)?|rest)\s+(?:is\s+|are\s+)?(?:omitted|elided|truncated)"
    r"|omitted\s+for\s+brevity|for\s+brevity|same\s+as\s+(?:before|above)|keep\s+(?:the\s+)?(?:existing|rest)"
    r"|(?:code|rest|everything(?:\s+else)?|file|functions?|methods?|class|lines|others?)\s+(?:\w+\s+)?"
    r"(?:remains?|stays?|is|are|kept)\s+(?:unchanged|the\s+same|as\s+(?:is|before)))\b",
    re.IGNORECASE)
_ONLY_UNCHANGED = re.compile(r"^\(?\s*(?:unchanged|no\s+changes?|same\s+as\s+before|as\s+before)\s*\.?\)?$",
                             re.IGNORECASE)
_UNCHANGED = re.compile(r"\b(?:unchanged|the\s+same|as\s+(?:is|before)|omitted)\b", re.IGNORECASE)
_NOTE = re.compile(r"^(?:TODO|FIXME|NOTE|XXX|HACK)\b", re.IGNORECASE)
_LEADING_ELLIPSIS_PROSE = re.compile(rf"^{_ELLIPSIS}\s+.*\b(?:existing|rest|remaining|unchanged|previous|other|"
                                     r"omitted|same)\b", re.IGNORECASE)


def find_placeholder(old: str, new: str) -> tuple[int, str] | None:
    """The first line of ``new`` that is a placeholder absent from ``old``: (1-based line, text)."""
    known = {line.strip() for line in old.splitlines()}
    previous = ""
    for number, line in enumerate(new.splitlines(), 1):
        text = line.strip()
        if text and text not in known and _is_placeholder(text, previous):
            return number, text
        if text:
            previous = text
    return None


def check_placeholders(path: str, old: str, new: str) -> None:
    """Raise :class:`PlaceholderError` if ``new`` has a placeholder that ``old`` did not have."""
    hit = find_placeholder(old, new)
    if hit is not None:
        number, text = hit
        raise PlaceholderError(
            f"{path}: line {number} of the new text is a placeholder ({text!r}), not real code; "
            "applying it would delete the code it stands for. Write out the complete lines instead")


def _is_placeholder(text: str, previous: str) -> bool:
    if _BARE.match(text):
        if text.strip("." + "…") == "" and _python_body(previous):
            return False  # `...` as the body of a def/class/if: a real stub
        return True
    if _ANGLE.match(text) or _LEADING_ELLIPSIS_PROSE.match(text):
        return True
    m = _COMMENT.match(text)
    if not m:
        return False
    words = m.group("text")
    if _ONLY_UNCHANGED.match(words):
        return True
    has_ellipsis = re.search(_ELLIPSIS, words) is not None
    if _NOTE.match(words) or not _PHRASES.search(words):
        return False
    # "# ... rest of the code", "// existing code here", "# rest of file unchanged"; but a real
    # comment such as "# read the rest of the file into a buffer for parsing" is longer prose
    return has_ellipsis or len(words.split()) <= 5 or _UNCHANGED.search(words) is not None


def _python_body(previous: str) -> bool:
    """Whether a bare ``...`` after line ``previous`` is a body (after ``def f():`` or a docstring)."""
    code = previous.split("#", 1)[0].rstrip()
    return code.endswith(":") or code.endswith('"""') or code.endswith("'''")
