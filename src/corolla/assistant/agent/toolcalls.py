"""Tool calls written as text, for endpoints without native tool calling (and for native endpoints
whose model wrote a call the server could not parse).

Small models write calls in many near-misses of the format they were shown, so the parser is
tolerant: ``<tool_call>{...}</tool_call>`` (closing tag optional, as when the reply was cut), a
fenced ```json block, or a bare ``{"name": ..., "arguments": ...}`` object anywhere in the text;
single quotes and trailing commas (Python dict syntax); ``arguments`` given as a JSON string or under
``parameters``/``args``; the OpenAI shape ``{"function": {"name", "arguments"}}``.

What cannot be read is not silently dropped: :func:`parse_text_calls` returns a reason the agent
sends back to the model ("the JSON inside <tool_call> is cut off", "unknown tool 'readfile'; the
tools are ..."), so it can retry.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_NAME_KEYS = ("name", "tool", "tool_name", "function")
_ARG_KEYS = ("arguments", "parameters", "args", "input")
_NAMED = re.compile(r"""["']name["']\s*:\s*["']([\w.-]+)["']""")


@dataclass(frozen=True)
class TextCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class ParsedText:
    """What a reply holds: calls, or a reason they could not be read (``error``), and the prose."""

    calls: list[TextCall] = field(default_factory=list)
    error: str | None = None
    content: str = ""  # the reply without its tool calls


def parse_text_calls(text: str, known: set[str] | frozenset[str]) -> ParsedText:
    """The tool calls written in ``text``; no calls and no error means a final answer."""
    if OPEN in text:
        calls = []
        for match in _BLOCK.finditer(text):
            body = _unfence(match.group(1).strip())
            call, error = _call_from(body, known, strict=True)
            if error:
                cut = not match.group(0).rstrip().endswith(CLOSE)
                return ParsedText(error=error + (" (the reply ends before </tool_call>: keep calls short)"
                                                 if cut else ""), content=text)
            calls.append(call)
        return ParsedText(calls, None, _BLOCK.sub("", text).strip())
    calls, errors, spans = [], [], []
    for start, end, obj in _objects(text):
        call, error = _call_from_obj(obj, known, strict=False)
        if call is not None:
            calls.append(call)
            spans.append((start, end))
        elif error:
            errors.append(error)
    if calls:
        return ParsedText(calls, None, _remove(text, spans).strip())
    if errors:
        return ParsedText(error=errors[0], content=text)
    named = next((m.group(1) for m in _NAMED.finditer(text) if m.group(1) in known), None)
    if named is not None:  # a call was meant but is not a whole object (cut off, unbalanced)
        return ParsedText(error=f"the call of {named} is not a complete JSON object; write "
                                f'<tool_call>{{"name": "{named}", "arguments": {{...}}}}</tool_call>', content=text)
    return ParsedText(content=text.strip())


def parse_arguments(arguments: Any) -> tuple[dict | None, str | None]:
    """A native call's arguments (JSON text or an object) as a dict, or the reason they are not one."""
    if isinstance(arguments, dict):
        return arguments, None
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}, None
    if isinstance(arguments, str):
        value = _loads(arguments)
        if isinstance(value, dict):
            return value, None
        return None, f"the arguments are not a JSON object: {arguments[:200]!r}"
    return None, f"the arguments are a {type(arguments).__name__}, not a JSON object"


# --- helpers ---------------------------------------------------------------------------------------
def _unfence(body: str) -> str:
    fenced = _FENCE.search(body)
    return fenced.group(1).strip() if fenced else body


def _loads(text: str) -> Any:
    """JSON, or the near-JSON small models write (trailing commas, Python literals); None if neither."""
    text = text.strip()
    for attempt in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            return json.loads(attempt)
        except ValueError:
            pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        pass
    # the first whole object, ignoring text after it ("{...} I will now read the file")
    start = text.find("{")
    if start >= 0:
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0]
        except ValueError:
            return None
    return None


def _call_from(body: str, known, strict: bool) -> tuple[TextCall | None, str | None]:
    if not body:
        return None, "the <tool_call> block is empty"
    obj = _loads(body)
    if obj is None:
        return None, (f"the text inside <tool_call> is not valid JSON: {body[:200]!r}; write "
                      f'{{"name": "TOOL", "arguments": {{...}}}} with double quotes')
    return _call_from_obj(obj, known, strict)


def _call_from_obj(obj: Any, known, strict: bool) -> tuple[TextCall | None, str | None]:
    """A call from a parsed object. Not strict (a bare object in prose): only objects that look like
    calls count; an object naming an unknown tool is an error only if it has arguments too."""
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict):
        return None, ("a tool call must be one JSON object with \"name\" and \"arguments\"" if strict else None)
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    arg_key = next((k for k in _ARG_KEYS if k in obj), None)
    if name is None:
        return None, ('the tool call has no "name"' if strict else None)
    if name not in known:
        if strict or arg_key is not None:
            return None, f"unknown tool {name!r}; the tools are {', '.join(sorted(known))}"
        return None, None
    args, error = parse_arguments(obj.get(arg_key) if arg_key else {})
    if error:
        return None, f"{name}: {error}"
    return TextCall(name, args), None


def _objects(text: str) -> list[tuple[int, int, Any]]:
    """Every top-level JSON (or Python-literal) object in ``text``, with its span."""
    found: list[tuple[int, int, Any]] = []
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i >= 0:
        obj, end = None, i + 1
        try:
            obj, used = decoder.raw_decode(text[i:])
            end = i + used
        except ValueError:
            close = _balanced_end(text, i)
            if close is not None:
                obj = _loads(text[i:close])
                end = close if obj is not None else i + 1
        if isinstance(obj, dict):
            found.append((i, end, obj))
        else:
            end = i + 1
        i = text.find("{", end)
    return found


def _balanced_end(text: str, start: int) -> int | None:
    depth, quote, escaped = 0, "", False
    for j in range(start, len(text)):
        ch = text[j]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def _remove(text: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return _FENCE.sub(lambda m: "" if not m.group(1).strip() else m.group(0), "".join(out))
