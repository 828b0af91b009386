"""Checking a model's tool arguments against the tool's JSON schema, with messages a small model can act on.

Only the schema features the agent's tools use: an object of named properties with ``type``
(string, integer, boolean, number, object, array), ``enum``, ``minimum``/``maximum`` and
``default``, required names, and no extra properties. Booleans are not integers; a quoted number
is a mistake, answered with how to write it. An explicit null for an optional argument counts as
not given (models write it often).
"""

from __future__ import annotations

import json

_TYPES = {"string": (str,), "integer": (int,), "boolean": (bool,), "number": (int, float), "object": (dict,),
          "array": (list,)}
_A = {"string": "a string", "integer": "an integer", "boolean": "a boolean", "number": "a number",
      "object": "an object", "array": "a list"}


def _type_name(value) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check_args(tool, args) -> tuple[dict | None, str]:
    """``args`` checked against ``tool``'s schema, with defaults filled in; or (None, what is wrong)."""
    usage = f"Usage: {tool.usage()}."
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None, f"{tool.name}: the arguments are not valid JSON. {usage}"
    if not isinstance(args, dict):
        return None, f"{tool.name}: the arguments must be a JSON object, got {_type_name(args)}. {usage}"
    props = tool.parameters.get("properties", {})
    extra = sorted(k for k in args if k not in props)
    if extra:
        plural = "s" if len(extra) > 1 else ""
        return None, f"{tool.name}: unknown argument{plural} {', '.join(map(repr, extra))}. {usage}"
    missing = [k for k in tool.parameters.get("required", ()) if k not in args]
    if missing:
        return None, f"{tool.name}: missing required argument {', '.join(map(repr, missing))}. {usage}"
    out = {}
    for key, schema in props.items():
        if key not in args:
            if "default" in schema:
                out[key] = schema["default"]
            continue
        value, want = args[key], schema.get("type")
        if value is None and key not in tool.parameters.get("required", ()):
            continue  # an explicit null for an optional argument means "not given"
        types = _TYPES.get(want, (object,))
        if not isinstance(value, types) or (want in ("integer", "number") and isinstance(value, bool)):
            hint = f" (write {value.strip()} without quotes)" if want == "integer" and isinstance(value, str) \
                and value.strip().isdigit() else ""
            return None, f"{tool.name}: argument {key!r} must be {_A.get(want, want)}, got " \
                         f"{_type_name(value)}{hint}. {usage}"
        if "enum" in schema and value not in schema["enum"]:
            return None, f"{tool.name}: argument {key!r} must be one of {', '.join(map(repr, schema['enum']))}, " \
                         f"got {value!r}."
        if "minimum" in schema and value < schema["minimum"]:
            return None, f"{tool.name}: argument {key!r} must be at least {schema['minimum']}, got {value}."
        if "maximum" in schema and value > schema["maximum"]:
            return None, f"{tool.name}: argument {key!r} must be at most {schema['maximum']}, got {value}."
        out[key] = value
    return out, ""
