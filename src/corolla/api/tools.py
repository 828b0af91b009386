"""Tool calling in OpenAI's format for any model.

Tools are described to the model (through its chat template when the template knows ``tools``,
as Qwen2.5's does, else in the system prompt) with one strict reply format, the one Qwen2.5
uses natively::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The reply is parsed back into ``message.tool_calls``; anything that does not parse as a call of
a known tool stays plain content.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as text

    def to_openai(self) -> dict:
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def tools_system_prompt(tools: list[dict], choice: str | None = None) -> str:
    """Instructions that describe ``tools`` (OpenAI tool dicts) and the reply format."""
    lines = ["# Tools", "", "You may call one or more functions to assist with the user query.", "",
             "You are provided with function signatures within <tools></tools> XML tags:", "<tools>"]
    lines += [json.dumps(t, ensure_ascii=False) for t in tools]
    lines += ["</tools>", "",
              "For each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:",
              "<tool_call>", '{"name": <function-name>, "arguments": <args-json-object>}', "</tool_call>"]
    if choice == "required":
        lines += ["", "You must call at least one function."]
    elif choice:
        lines += ["", f"You must call the function {choice}."]
    return "\n".join(lines)


def call_prefill(choice: str | None) -> str:
    """Text the assistant's reply is made to start with, so the model follows the format."""
    if choice is None:
        return ""
    if choice == "required":
        return OPEN + "\n"
    return OPEN + "\n" + '{"name": ' + json.dumps(choice) + ', "arguments": '


def parse_tool_calls(text: str, known: set[str]) -> tuple[str | None, list[ParsedCall]]:
    """Split a reply into (content, calls). Calls of unknown tools or broken JSON are not calls.

    Besides the ``<tool_call>`` format, a reply that is nothing but one call object (bare or in
    a fenced code block, as small models often write it) is a call too.
    """
    if OPEN not in text:
        fenced = _FENCE.fullmatch(text.strip())
        call = _parse_one(fenced.group(1) if fenced else text.strip(), known) if text.strip() else None
        return (None, [call]) if call else (text, [])
    calls: list[ParsedCall] = []
    for match in _CALL.finditer(text):
        call = _parse_one(match.group(1), known)
        if call is None:
            return text, []  # a malformed call: give the text back untouched rather than half of it
        calls.append(call)
    content = _CALL.sub("", text).strip()
    return (content or None), calls


def _parse_one(body: str, known: set[str]) -> ParsedCall | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in known:
        return None
    args: Any = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def history_for_template(messages: list[dict], native: bool) -> list[dict]:
    """Assistant tool calls and ``tool`` results in a shape the chat template can render.

    ``native``: the template knows tools (it renders ``tool_calls`` and the ``tool`` role itself;
    arguments go in as objects). Otherwise calls become ``<tool_call>`` text and results become
    user messages wrapped in ``<tool_response>``.
    """
    out: list[dict] = []
    for m in messages:
        calls = m.get("tool_calls") or []
        if m["role"] == "assistant" and calls:
            if native:
                out.append({"role": "assistant", "content": m.get("content") or "",
                            "tool_calls": [{"type": "function", "function": {
                                "name": c["function"]["name"], "arguments": _as_object(c["function"]["arguments"])}}
                                for c in calls]})
            else:
                text = "\n".join(OPEN + "\n" + json.dumps({"name": c["function"]["name"],
                                                           "arguments": _as_object(c["function"]["arguments"])},
                                                          ensure_ascii=False) + "\n" + CLOSE for c in calls)
                prefix = (m.get("content") or "").strip()
                out.append({"role": "assistant", "content": f"{prefix}\n{text}" if prefix else text})
        elif m["role"] == "tool" and not native:
            out.append({"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def _as_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments
