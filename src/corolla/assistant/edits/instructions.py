"""What the system prompt tells the model about the edit format: short (small models, small
context windows) and precise, with one worked example each."""

from __future__ import annotations

from corolla.assistant.edits.types import FORMATS, Target

_WHOLE = """\
Reply with the complete new version of {what} in ONE fenced code block (```), nothing else in the block.
- Write every line of it, changed or not. Never write "..." or comments like "# rest of the code unchanged".
- Keep the indentation as in the file. Do not add lines from outside {what_short}.
Example: asked to rename n to count in
    def add(n):
        return n + 1
you reply:
```python
    def add(count):
        return count + 1
```"""

_SEARCH_REPLACE = """\
Reply with SEARCH/REPLACE blocks that change the files, in exactly this format:
path/to/file.py
<<<<<<< SEARCH
lines copied exactly from the file
=======
the new lines
>>>>>>> REPLACE
- The file path goes on the line before each block{default}.
- SEARCH must copy the current lines exactly, with their indentation; include enough lines to be unique.
- Use one block per change. To create a new file, leave SEARCH empty.
- Never write "..." or "# rest of the code unchanged": write the real lines.
Example: to make greet in {example} say hello:
{example}
<<<<<<< SEARCH
def greet():
    print("hi")
=======
def greet():
    print("hello")
>>>>>>> REPLACE"""


def format_instructions(fmt: str, target: Target | None = None) -> str:
    """The system-prompt text teaching the model edit format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "whole":
        if target is None or target.start_line is None:
            name = target.path if target is not None else "the file"
            what, short = f"the whole file {name}", "the file"
        else:
            what = f"lines {target.start_line}-{target.end_line or target.start_line} of {target.path}"
            short = "those lines"
        return _WHOLE.format(what=what, what_short=short)
    if fmt == "search_replace":
        default = f" ({target.path} here)" if target is not None else ""
        # small models copy the example's path verbatim: make it the file they are editing
        return _SEARCH_REPLACE.format(default=default, example=target.path if target is not None else "app.py")
    raise ValueError(f"unknown edit format {fmt!r}; choose one of {', '.join(FORMATS)}")
