"""Checking a model's tool arguments against the tool's JSON schema, with messages a small model can act on.

Only the schema features the agent's tools use: an object of named properties with ``type``
(string, integer, boolean, number, object, array), ``enum``, ``minimum``/``maximum`` and
``default``, required names, and no extra properties. Booleans are not integers; a quoted number
is a mistake, answered with how to write it. An explicit null for an optional argument counts as
not given (models write it often).

The tools of MCP servers come with schemas of any shape: :func:`check_args_jsonschema` applies them
whole with :mod:`jsonschema`.
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


def _as_object(tool, args) -> tuple[dict | None, str]:
    """``args`` (a dict, its JSON text or nothing) as a dict, or (None, what is wrong)."""
    if args is None:
        return {}, ""
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None, f"{tool.name}: the arguments are not valid JSON. Usage: {tool.usage()}."
    if not isinstance(args, dict):
        return None, (f"{tool.name}: the arguments must be a JSON object, got {_type_name(args)}. "
                      f"Usage: {tool.usage()}.")
    return args, ""


def check_args(tool, args) -> tuple[dict | None, str]:
    """``args`` checked against ``tool``'s schema, with defaults filled in; or (None, what is wrong)."""
    usage = f"Usage: {tool.usage()}."
    args, problem = _as_object(tool, args)
    if args is None:
        return None, problem
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


def check_args_jsonschema(tool, args) -> tuple[dict | None, str]:
    """``args`` checked against any JSON Schema (the tools of MCP servers use every keyword), with
    :mod:`jsonschema` where it is installed (it comes with the ``mcp`` SDK), else for required names only;
    or (None, what is wrong). A null for an optional argument whose schema has no null counts as not given.
    A schema that is itself invalid is left to the tool's server to apply."""
    args, problem = _as_object(tool, args)
    if args is None:
        return None, problem
    usage = f"Usage: {tool.usage()}."
    schema = tool.parameters if isinstance(tool.parameters, dict) else {}
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [k for k in schema.get("required") or () if isinstance(k, str)]
    args = {k: v for k, v in args.items() if v is not None or k in required or _allows_null(props.get(k))}
    missing = [k for k in required if k not in args]
    if missing:
        return None, f"{tool.name}: missing required argument {', '.join(map(repr, missing))}. {usage}"
    try:
        import jsonschema
    except ImportError:
        return args, ""
    try:
        validator = jsonschema.validators.validator_for(schema)
        validator.check_schema(schema)
        errors = sorted(validator(schema).iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path])
    except (jsonschema.SchemaError, jsonschema.exceptions.UnknownType, TypeError, ValueError, RecursionError):
        return args, ""
    if errors:
        where = ".".join(map(str, errors[0].absolute_path))
        return None, f"{tool.name}: {'argument ' + repr(where) + ': ' if where else ''}{errors[0].message}. {usage}"
    return args, ""


def _allows_null(schema) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return kind == "null" or (isinstance(kind, list) and "null" in kind) or any(
        _allows_null(s) for key in ("anyOf", "oneOf") for s in schema.get(key) or ())
