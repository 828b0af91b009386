"""``#file:path``, ``#file:path:A-B`` and ``#selection`` in a query, as Copilot Chat writes them.

A path runs to the next whitespace (or is quoted: ``#file:"my dir/a.py"``); trailing sentence
punctuation is not part of it. A line range is ``:A-B`` or ``:A`` at its end. The query handed on
to the model keeps the words but not the markup: ``explain #file:a.py:3-9`` -> ``explain a.py:3-9``.
"""

from __future__ import annotations

import re

from corolla.assistant.context.types import Reference

_REF = re.compile(r'#file:(?:"([^"]+)"|(\S+))|#selection\b')
_RANGE = re.compile(r"^(.*?):(\d+)(?:-(\d+))?$")
_TRAILING = ".,;!?)]}'\"`"


def parse_references(query: str) -> tuple[str, list[Reference]]:
    """``(query without the markup, references in order of appearance)``."""
    refs: list[Reference] = []
    out: list[str] = []
    pos = 0
    for m in _REF.finditer(query):
        out.append(query[pos:m.start()])
        pos = m.end()
        if m.group(0) == "#selection":
            refs.append(Reference("selection", m.group(0)))
            out.append("the selection")
            continue
        path, tail = m.group(1), ""
        if path is None:
            path = m.group(2)
            stripped = path.rstrip(_TRAILING)
            path, tail = stripped, path[len(stripped):]
        start = end = None
        ranged = _RANGE.match(path)
        if ranged:
            path, start = ranged.group(1), int(ranged.group(2))
            end = int(ranged.group(3)) if ranged.group(3) else start
            start, end = min(start, end), max(start, end)
        raw = m.group(0)[: len(m.group(0)) - len(tail)]
        ref = Reference("file", raw, path, start, end)
        refs.append(ref)
        out.append(ref.label + tail)
    out.append(query[pos:])
    return "".join(out), refs
