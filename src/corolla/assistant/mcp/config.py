"""Which MCP servers a workspace configures: ``.corolla/mcp.json``, then ``.vscode/mcp.json``.

The format is VS Code's (``{"servers": {NAME: ENTRY}}``); Claude's and Cursor's key ``mcpServers`` is
accepted too, and so are comments and trailing commas (VS Code's files are JSONC). An entry is

- stdio: ``{"type": "stdio", "command": "uvx", "args": [...], "env": {...}, "cwd": "..."}``
- streamable HTTP: ``{"type": "http", "url": "http://127.0.0.1:8931/mcp", "headers": {...}}``

(without ``type``, ``command`` means stdio and ``url`` HTTP), plus corolla's own keys: ``"disabled": true``
(not started), ``"timeout_s": 120`` (longest tool call), and ``"trusted": true`` (its tools are called
without asking; honoured in ``.corolla/mcp.json`` only, which is the user's own: a ``.vscode/mcp.json``
comes with the repository). Strings may hold VS Code's variables ``${workspaceFolder}``,
``${workspaceFolderBasename}``, ``${userHome}``, ``${env:NAME}`` and ``${pathSeparator}``; a relative
``cwd`` is taken from the workspace, which is also the default.

Reading never raises for a bad file or entry: each becomes a :class:`ConfigProblem` with an
:class:`MCPConfigError` that names the file, the server and the key, and the other servers are used.
A name configured in both files is the ``.corolla`` one. Nothing here starts a process (pure).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from corolla.assistant.mcp.errors import MCPConfigError

CONFIG_FILES = (".corolla/mcp.json", ".vscode/mcp.json")  # in order of precedence
OWN_FILE = CONFIG_FILES[0]  # the user's own file: the only one whose "trusted" counts

Transport = Literal["stdio", "http"]

_TYPES: dict[str, Transport] = {"stdio": "stdio", "http": "http", "streamable-http": "http",
                                "streamable_http": "http", "streamableHttp": "http"}
_KEYS = {"type", "command", "args", "env", "cwd", "url", "headers", "disabled", "timeout_s", "trusted"}
# keys of VS Code's, Claude's or Cline's formats that do not change how corolla starts or calls a server
_IGNORED_KEYS = {"dev", "gallery", "version", "description", "autoApprove", "alwaysAllow", "enabled"}
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_CLOSING = re.compile(r"\s*[}\]]")


@dataclass(frozen=True)
class ServerSpec:
    """One configured server, with its variables expanded."""

    name: str
    transport: Transport
    source: str  # the file it comes from, relative to the workspace
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    trusted: bool = False
    timeout_s: float | None = None  # the longest tool call (None: the hub's default)
    notes: tuple[str, ...] = ()  # what a user should know (a key that was ignored)

    def target(self) -> str:
        """The command line or the URL, as a person would type it."""
        if self.transport == "stdio":
            return shlex.join([self.command or "", *self.args])
        return self.url or ""


@dataclass(frozen=True)
class ConfigProblem:
    """A file or an entry that cannot be used (``name`` is "" when the whole file cannot)."""

    name: str
    source: str
    error: MCPConfigError


@dataclass(frozen=True)
class MCPConfig:
    """The servers a workspace configures, what could not be read, and what is switched off."""

    servers: tuple[ServerSpec, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()
    disabled: tuple[ServerSpec, ...] = ()
    files: tuple[str, ...] = ()  # the configuration files found

    def __bool__(self) -> bool:
        return bool(self.servers or self.problems or self.disabled)


def load_config(root: Path, *, workspace: Path | None = None) -> MCPConfig:
    """The MCP servers configured in ``root`` (its ``.corolla/mcp.json`` and ``.vscode/mcp.json``).

    ``workspace`` is the folder the servers work on (``${workspaceFolder}`` and the default ``cwd``),
    ``root`` by default: an agent in a git worktree reads the configuration of the main tree (where
    ``.corolla/`` is) and gives the servers its worktree.
    """
    root = Path(root)
    workspace = Path(workspace) if workspace is not None else root
    servers: dict[str, ServerSpec] = {}
    problems: list[ConfigProblem] = []
    disabled: list[ServerSpec] = []
    files: list[str] = []
    for rel in CONFIG_FILES:
        path = root / rel
        if not path.is_file():
            continue
        files.append(rel)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            problems.append(ConfigProblem("", rel, MCPConfigError(f"{rel}: cannot be read ({e})")))
            continue
        entries, problem = _entries(text, rel)
        if problem is not None:
            problems.append(ConfigProblem("", rel, problem))
            continue
        for name, entry in entries.items():
            if name in servers or any(p.name == name for p in problems) or any(d.name == name for d in disabled):
                continue  # the .corolla one wins
            try:
                spec, off = parse_entry(name, entry, source=rel, workspace=workspace)
            except MCPConfigError as e:
                problems.append(ConfigProblem(name, rel, e))
                continue
            if off:
                disabled.append(spec)
            else:
                servers[name] = spec
    return MCPConfig(tuple(servers.values()), tuple(problems), tuple(disabled), tuple(files))


def _entries(text: str, source: str) -> tuple[dict[str, Any], MCPConfigError | None]:
    try:
        data = json.loads(strip_jsonc(text))
    except ValueError as e:
        return {}, MCPConfigError(f"{source} is not valid JSON: {e}")
    if not isinstance(data, dict):
        return {}, MCPConfigError(f"{source} must hold a JSON object with \"servers\", got {_kind(data)}")
    keys = [k for k in ("servers", "mcpServers") if k in data]
    if not keys:
        found = ", ".join(map(repr, data)) or "none"
        return {}, MCPConfigError(f"{source} has no \"servers\" (or \"mcpServers\") object; its keys: {found}")
    if len(keys) == 2:
        return {}, MCPConfigError(f"{source} has both \"servers\" and \"mcpServers\"; keep one")
    entries = data[keys[0]]
    if not isinstance(entries, dict):
        return {}, MCPConfigError(f"{source}: \"{keys[0]}\" must be an object of NAME: server, got {_kind(entries)}")
    return entries, None


def parse_entry(name: str, entry: Any, *, source: str, workspace: Path) -> tuple[ServerSpec, bool]:
    """One entry as a :class:`ServerSpec` and whether it is disabled; :class:`MCPConfigError` if it is not usable."""
    where = f"{source}: server {name!r}"
    if not name.strip():
        raise MCPConfigError(f"{source}: a server has an empty name")
    if not isinstance(entry, dict):
        raise MCPConfigError(f"{where} must be an object with \"command\" or \"url\", got {_kind(entry)}")
    unknown = sorted(k for k in entry if k not in _KEYS and k not in _IGNORED_KEYS)
    if "envFile" in unknown:
        raise MCPConfigError(f"{where}: \"envFile\" is not supported; put the variables under \"env\"")
    if unknown:
        raise MCPConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(_KEYS))})")
    transport = _transport(entry, where)
    expand = _Expander(workspace, where)
    notes: list[str] = []
    trusted = _bool(entry, "trusted", where)
    if trusted and source != OWN_FILE:
        notes.append(f"\"trusted\" is ignored in {source} (it comes with the repository); set it in {OWN_FILE}")
        trusted = False
    timeout_s = entry.get("timeout_s")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float)
                                  or timeout_s <= 0):
        raise MCPConfigError(f"{where}: \"timeout_s\" must be a positive number of seconds, got {timeout_s!r}")
    common = dict(name=name, source=source, trusted=trusted, notes=tuple(notes),
                  timeout_s=float(timeout_s) if timeout_s is not None else None)
    if transport == "stdio":
        for key in ("url", "headers"):
            if key in entry:
                raise MCPConfigError(f"{where}: \"{key}\" belongs to an http server; a stdio server has \"command\"")
        command = entry.get("command")
        if not isinstance(command, str) or not command.strip():
            raise MCPConfigError(f"{where}: \"command\" must be a non-empty string (the program that starts the "
                                 "server), got " + _kind(command))
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str | int | float) and not isinstance(a, bool)
                                                 for a in args):
            raise MCPConfigError(f"{where}: \"args\" must be a list of strings")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise MCPConfigError(f"{where}: \"cwd\" must be a string (a folder)")
        folder = workspace if cwd is None else workspace / Path(expand(cwd)).expanduser()
        spec = ServerSpec(transport="stdio", command=expand(command), args=tuple(expand(str(a)) for a in args),
                          env=_strings(entry, "env", where, expand), cwd=folder, **common)
    else:
        for key in ("command", "args", "env", "cwd"):
            if key in entry:
                raise MCPConfigError(f"{where}: \"{key}\" belongs to a stdio server; an http server has \"url\"")
        url = entry.get("url")
        if not isinstance(url, str) or not url.strip():
            raise MCPConfigError(f"{where}: \"url\" must be a non-empty string, got {_kind(url)}")
        url = expand(url).strip()
        if not re.match(r"https?://[^/\s]+", url):
            raise MCPConfigError(f"{where}: \"url\" must start with http:// or https:// and name a host, got {url!r}")
        spec = ServerSpec(transport="http", url=url, headers=_strings(entry, "headers", where, expand), **common)
    return spec, _bool(entry, "disabled", where)


def _transport(entry: dict, where: str) -> Transport:
    kind = entry.get("type")
    if kind is None:
        if "command" in entry and "url" in entry:
            raise MCPConfigError(f"{where} has both \"command\" and \"url\"; set \"type\" to \"stdio\" or \"http\"")
        if "command" in entry:
            return "stdio"
        if "url" in entry:
            return "http"
        raise MCPConfigError(f"{where} needs \"command\" (a stdio server) or \"url\" (an http server)")
    if kind == "sse":
        raise MCPConfigError(f"{where}: the legacy SSE transport is not supported; use the server's streamable "
                             "HTTP endpoint (\"type\": \"http\")")
    if not isinstance(kind, str) or kind not in _TYPES:
        raise MCPConfigError(f"{where}: unknown \"type\" {kind!r}; use \"stdio\" or \"http\"")
    return _TYPES[kind]


def _bool(entry: dict, key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise MCPConfigError(f"{where}: \"{key}\" must be true or false, got {value!r}")
    return value


def _strings(entry: dict, key: str, where: str, expand) -> dict[str, str]:
    value = entry.get(key, {})
    if not isinstance(value, dict):
        raise MCPConfigError(f"{where}: \"{key}\" must be an object of NAME: value")
    out = {}
    for k, v in value.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise MCPConfigError(f"{where}: \"{key}\".{k} must be a string, got {_kind(v)}")
        out[str(k)] = expand(str(v))
    return out


class _Expander:
    """VS Code's variables in a string, or :class:`MCPConfigError` for one corolla cannot fill in."""

    def __init__(self, workspace: Path, where: str):
        self.workspace, self.where = workspace, where

    def __call__(self, text: str) -> str:
        return _VARIABLE.sub(self._one, text)

    def _one(self, match: re.Match) -> str:
        name = match.group(1)
        if name == "workspaceFolder":
            return str(self.workspace)
        if name == "workspaceFolderBasename":
            return self.workspace.name
        if name == "userHome":
            return str(Path.home())
        if name in ("pathSeparator", "/"):
            return os.sep
        if name.startswith("env:"):
            return os.environ.get(name[4:], "")
        if name.startswith("input:"):
            raise MCPConfigError(f"{self.where} asks for an input (${{{name}}}), which corolla cannot prompt for; "
                                 "put the value in the file or in an environment variable (${env:NAME})")
        raise MCPConfigError(f"{self.where}: unknown variable ${{{name}}} (known: workspaceFolder, "
                             "workspaceFolderBasename, userHome, env:NAME, pathSeparator)")


def strip_jsonc(text: str) -> str:
    """``text`` without ``//`` and ``/* */`` comments and trailing commas (outside strings): JSONC to JSON."""
    return _scan(_scan(text, comments=True), comments=False)


def _scan(text: str, *, comments: bool) -> str:
    """One pass over ``text`` that keeps strings as they are and drops comments (``comments``) or else
    commas followed only by whitespace and a closing bracket."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif comments and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif comments and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif not comments and ch == "," and _CLOSING.match(text, i + 1):
            i += 1  # a trailing comma
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list",
            dict: "an object", type(None): "nothing"}.get(type(value), type(value).__name__)


__all__ = ["CONFIG_FILES", "ConfigProblem", "MCPConfig", "OWN_FILE", "ServerSpec", "load_config", "parse_entry",
           "strip_jsonc"]
